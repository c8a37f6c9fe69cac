"""Tensor-parallel worker processes. The caller's engine is rank 0: it starts ranks 1..tp-1 itself (one
process each, spawned), each running the entry the engine hands over (a module-level function, so that the
spawned process imports it by name): it builds its slice of the model, its KV pool and its attention backend,
then runs every step rank 0 broadcasts. Rank 0 alone schedules, allocates blocks, samples and detokenizes.

Workers ignore Ctrl-C (rank 0 stops them), exit when rank 0's process goes away, and rank 0 watches them: a
worker that dies turns the step in flight and every later one into an error naming its rank.
"""

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .llmapi.llm_args import LlmArgs
from .runtime.distributed import Communicator
from .runtime.scheduler import Batch

# What a worker process runs once it has joined the group: build its rank's engine and follow rank 0.
WorkerEntry = Callable[[LlmArgs, torch.device, Communicator], None]
POLL_SECONDS = 0.2
STOP_SECONDS = 10.0


@dataclass
class SeqView:
    """What a worker's model runner reads of one request in one step (rank 0 holds the request itself)."""

    request_id: int
    block_table: list[int]
    prompt_token_ids: list[int] = field(default_factory=list)  # contexts only
    kept_prompt_len: int = 0
    last_token: int = 0
    num_tokens: int = 0
    cache_len: int = 0
    cached_len: int = 0  # contexts: prompt tokens from the prefix cache
    computed_len: int = 0  # contexts: prompt tokens already in the cache (cached prefix, earlier chunks)
    chunk_len: int = 0  # contexts: prompt tokens this step computes
    history_table: list[int] = field(default_factory=list)  # contexts of rocket_mt: the whole prompt's blocks
    prompt_logprobs_n: Optional[int] = None  # contexts: the LM head runs over the prompt on every rank
    prompt_logprobs: list = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def final_chunk(self) -> bool:
        return self.computed_len + self.chunk_len >= self.prompt_len


@dataclass
class StepInput:
    """One step as rank 0 scheduled it, plus the requests finished since the last one."""

    contexts: list[SeqView]
    generations: list[SeqView]
    released: list[int]

    @classmethod
    def of(cls, batch: Batch, released: list[int]) -> "StepInput":
        contexts = [SeqView(s.request_id, list(s.block_table), s.prompt_token_ids, s.kept_prompt_len,
                            cached_len=s.cached_len, computed_len=s.computed_len, chunk_len=s.chunk_len,
                            history_table=list(s.history_table), prompt_logprobs_n=s.prompt_logprobs_n)
                    for s in batch.contexts]  # fmt: skip
        generations = [
            SeqView(
                s.request_id,
                list(s.block_table),
                last_token=s.last_token,
                num_tokens=s.num_tokens,
                cache_len=s.cache_len,
            )  # fmt: skip
            for s in batch.generations
        ]
        return cls(contexts, generations, released)

    def batch(self) -> Batch:
        return Batch(self.contexts, self.generations)  # type: ignore[arg-type]  (duck-typed sequences)


class Workers:
    """Ranks 1..tp-1, seen from rank 0."""

    def __init__(self, procs: list[Any]) -> None:
        self.procs = procs
        self.failure: Optional[str] = None
        self._watch = threading.Thread(target=self._watchdog, name="rocket-tp-watchdog", daemon=True)
        self._watch.start()

    @classmethod
    def start(cls, args: LlmArgs, device: torch.device, entry: WorkerEntry) -> tuple["Workers", Communicator]:
        """Start the workers, each running `entry(args, its device, its communicator)`, and join their group as
        rank 0."""
        world = args.tensor_parallel_size
        if device.type == "cuda" and torch.cuda.device_count() < world:
            from .errors import ConfigError

            raise ConfigError(f"{world} needs {world} GPUs, this machine has {torch.cuda.device_count()}",
                              "tensor_parallel_size")  # fmt: skip
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(
                target=_main,
                args=(entry, args, rank, world, init, device.type, os.getpid()),
                name=f"rocket-tp{rank}",
                daemon=True,
            )  # fmt: skip
            for rank in range(1, world)
        ]
        for p in procs:
            p.start()
        joined: dict[str, Any] = {}

        def join() -> None:
            try:
                joined["comm"] = Communicator.join(0, world, init, device)
            except Exception as e:  # surfaces below
                joined["error"] = e

        t = threading.Thread(target=join, daemon=True)
        t.start()
        while t.is_alive():  # a worker that dies before joining would leave rank 0 waiting for it
            t.join(POLL_SECONDS)
            dead = [p for p in procs if p.exitcode is not None]
            if dead and t.is_alive():
                _stop_procs(procs)
                raise RuntimeError(f"tensor-parallel rank {procs.index(dead[0]) + 1} exited with code "
                                   f"{dead[0].exitcode} while starting")  # fmt: skip
        if "error" in joined:
            _stop_procs(procs)
            raise RuntimeError(f"tensor-parallel group did not form: {joined['error']}") from joined["error"]
        return cls(procs), joined["comm"]

    def _watchdog(self) -> None:
        while not self._dead():
            time.sleep(POLL_SECONDS)
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None and dist.is_initialized() and dist.get_backend() == "nccl":
            abort()  # a collective waiting for the dead rank fails instead of hanging

    def _dead(self) -> bool:
        for rank, p in enumerate(self.procs, 1):
            if p.exitcode is not None and self.failure is None:
                self.failure = f"tensor-parallel rank {rank} exited with code {p.exitcode}"
        return self.failure is not None

    def check(self) -> None:
        """Raise if any worker has died."""
        if self._dead():
            raise RuntimeError(self.failure)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self, comm: Communicator) -> None:
        if self.failure is None:
            try:
                comm.broadcast(("stop", None))
            except Exception:  # a worker died meanwhile: it needs no message
                pass
        self.failure = self.failure or "the tensor-parallel workers were stopped"
        _stop_procs(self.procs)
        comm.close()


def _stop_procs(procs: list[Any]) -> None:
    deadline = time.monotonic() + STOP_SECONDS
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # rank 0 is gone: nothing will ever send the next step


def _main(entry: WorkerEntry, args: LlmArgs, rank: int, world: int, init: str, device_type: str, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches rank 0, which stops the workers
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    comm = Communicator.join(rank, world, init, device)
    entry(args, device, comm)
    comm.close()
