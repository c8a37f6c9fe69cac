"""The engine loop's body: admit, run one step, sample, detokenize, finish.

The composition root: it builds the checkpoint's model, the KV pool, the attention backend the sparse
registry names, the runner and the scheduler from one LlmArgs; nothing it composes imports it. Under tensor
parallelism it starts the worker ranks (tp_worker.py) and each of them builds the same engine on its slice
of the model and follows rank 0's steps."""

import gc
import itertools
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .errors import ConfigError, RequestError
from .llmapi.llm_args import LlmArgs
from .models.checkpoint import open_checkpoint
from .models.loader import kv_scales, load_model, resolve_dtype
from .models.parallel import HeadPartition, split
from .runtime.attention import AttentionBackend
from .runtime.distributed import SINGLE, Communicator
from .runtime.kv_cache import KVCachePool, ModelShape
from .runtime.model_runner import Feed, ModelRunner
from .runtime.sampler import greedy_tokens, logprobs_of, sample
from .runtime.scheduler import Batch, Scheduler
from .runtime.sequence import Sequence
from .sampling_params import SamplingParams
from .sparse import lookup
from .tp_worker import StepInput, Workers

CPU_POOL_BYTES = 2 << 30  # the CPU's default pool cap when kv_cache_config.max_tokens is not given


@dataclass
class Update:
    """What one step did to one request."""

    seq: Sequence
    new_token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: bool = False


class LLMEngine:
    def __init__(
        self, args: LlmArgs, device: Optional[torch.device] = None, comm: Optional[Communicator] = None
    ) -> None:
        """`comm` is given to a worker rank's engine; rank 0 (the caller's) starts the workers itself."""
        self.args = args
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # rank 0's GPU, by index for NCCL
        self.checkpoint = open_checkpoint(args.model)
        self.hf_config = self.checkpoint.config
        self.workers: Optional[Workers] = None
        self._released: list[int] = []  # requests finished since the workers' last step
        self._inflight: Optional[_Inflight] = None  # the overlap scheduler's launched, not yet landed step
        self._token_buffers = [torch.empty(0, dtype=torch.int64) for _ in range(2)]  # its pinned token copies
        self._last_landed = 0.0
        if comm is None and args.tensor_parallel_size > 1:
            self._check_tensor_parallel(args.tensor_parallel_size)
            self.workers, comm = Workers.start(args, self.device, follow_as_worker)
        self.comm = comm or SINGLE
        try:
            self._build()
        except BaseException:
            self.shutdown()
            raise

    def _check_tensor_parallel(self, tp: int) -> None:
        c, world = self.hf_config, Communicator(0, tp)
        HeadPartition.of(c.num_attention_heads, c.num_key_value_heads, world)
        split(c.intermediate_size, world, "intermediate_size")
        sparse = self.args.sparse_attention_config
        if c.num_key_value_heads < tp and sparse is not None and self._backend_cls().reduces_query_groups:
            raise ConfigError(
                f"{sparse.algorithm!r} scores each KV head over all its query heads, and the model's "
                f"{c.num_key_value_heads} KV heads would be replicated over {tp} ranks, each with part of the "
                f"heads: use at most {c.num_key_value_heads}",
                "tensor_parallel_size",
            )

    def _build(self) -> None:
        from transformers import AutoTokenizer

        args = self.args
        self.dtype = resolve_dtype(self.checkpoint, args.dtype, self.device)
        self.max_seq_len = self._max_seq_len()
        quant = args.quant_config.quant_algo
        self.model = load_model(
            self.checkpoint,
            self.dtype,
            self.device,
            random_weights=args.load_format == "dummy",
            comm=self.comm,
            quantization=quant.lower() if quant else None,
        )
        if args.tokenizer:
            self.tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        else:
            self.tokenizer = self.checkpoint.tokenizer()
        shape = self.model.shape
        sparse = args.sparse_attention_config
        kv = args.kv_cache_config
        if sparse is not None:
            sparse.check_model(shape, kv.tokens_per_block)
        # auto: the model's dtype, or fp8 where the checkpoint was calibrated for it (as TensorRT-LLM does).
        kv_name = "fp8" if kv.dtype == "auto" and self.checkpoint.kv_cache_fp8() else kv.dtype
        kv_dtype = {"auto": self.dtype, "fp8": torch.float8_e4m3fn}.get(kv_name) or getattr(torch, kv_name)
        blocks = self.comm.min(self._num_blocks(shape, kv_dtype))  # every rank's pool has the same block ids
        if blocks < 1:
            raise ConfigError("no memory is left for the KV cache", "kv_cache_config.free_gpu_memory_fraction")
        # Random weights have no calibrated scales (1.0, as for a checkpoint without them).
        calibrated = kv_name == "fp8" and args.load_format != "dummy"
        scales = kv_scales(self.checkpoint, shape.num_layers) if calibrated else (None, None)
        group = self._backend_cls().block_group(args.sparse_attention_config, kv.tokens_per_block)
        self.pool = KVCachePool(
            shape, blocks, kv.tokens_per_block, kv_dtype, self.device, *scales, kv.enable_block_reuse, group
        )
        use_kernels = self.device.type == "cuda" and args.attn_backend == "TRTLLM"
        self.backend = self._build_backend(shape, use_kernels)
        self.uses_kt_cache, self.token_kv_bytes = self.backend.uses_kt_cache, self.backend.token_kv_bytes
        graphs = args.cuda_graph_config
        self.runner = ModelRunner(
            self.model,
            self.backend,
            self.pool,
            self.device,
            graph_sizes=graphs.capture_sizes(args.max_batch_size) if graphs else None,
            graph_padding=bool(graphs and graphs.enable_padding),
            max_seq_len=self.max_seq_len,
        )
        window = self.backend.prompt_query_window  # stage 1's queries: a prompt's last chunk must hold them
        if args.enable_chunked_prefill and window >= args.max_num_tokens:
            raise ConfigError(
                f"{args.max_num_tokens} must exceed the {window} last prompt queries stage 1 reads "
                f"(sparse_attention_config.window_size), which a prompt's last chunk holds",
                "max_num_tokens",
            )
        self.scheduler = Scheduler(
            self.pool, args.max_batch_size, args.max_num_tokens, args.enable_chunked_prefill, window
        )
        self.eos_ids = self._eos_ids()
        self.iteration = 0
        self.stats: deque[dict[str, Any]] = deque(maxlen=1000)
        self.totals = {
            "decode_steps": 0,
            "tokens_attended": 0.0,
            "attention_bytes": 0.0,
            "prompt_tokens": 0,
            "generated_tokens": 0,
            "peak_batch": 0,
            "cached_prompt_tokens": 0,  # prompt tokens served by the prefix cache instead of computed
            "prefill_step_seconds": 0.0,  # wall time of steps that prefill a prompt (with any decodes beside)
            "decode_step_seconds": 0.0,  # wall time of decode-only steps
            "prefill_step_count": 0,  # steps, by the same two kinds
            "decode_step_count": 0,
            "decode_step_requests": 0,  # requests decoded, summed over decode-only steps (their mean batch)
            "gpu_peak_bytes": 0,  # the most GPU memory allocated at any step (a benchmark may zero it)
        }
        self.kept_tokens: deque[tuple[int, int]] = deque(maxlen=1000)  # (prompt_len, kept) per request
        self._decode_costs: dict[int, tuple[int, int]] = {}  # cache_len -> (tokens attended, bytes read) a step
        self._ids = itertools.count()

    def _max_seq_len(self) -> int:
        limit = getattr(self.hf_config, "max_position_embeddings", None) or 1 << 20
        window = getattr(self.hf_config, "sliding_window", None)
        if window and getattr(self.hf_config, "use_sliding_window", True):
            # Sliding-window attention is not implemented; within the window full attention is exact.
            if self.args.max_seq_len and self.args.max_seq_len > window:
                raise ConfigError(
                    f"{self.args.max_seq_len} exceeds the model's sliding_window ({window}), "
                    "past which this engine's full attention would differ from the model's",
                    "max_seq_len",
                )
            limit = min(limit, window)
        return self.args.max_seq_len or limit

    def _num_blocks(self, shape: ModelShape, kv_dtype: torch.dtype) -> int:
        kv = self.args.kv_cache_config
        per_block = KVCachePool.bytes_per_block(shape, kv.tokens_per_block, kv_dtype)
        per_block += self._backend_cls().side_cache_bytes_per_block(
            shape, self.args.sparse_attention_config, kv.tokens_per_block
        )
        by_tokens = -(-kv.max_tokens // kv.tokens_per_block) if kv.max_tokens else None
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int((free - self._activation_bytes()) * (kv.free_gpu_memory_fraction or 0.9))
            by_memory = max(0, budget // per_block)
            blocks = min(by_memory, by_tokens) if by_tokens else by_memory
        else:
            blocks = by_tokens or min(
                -(-4 * self.max_seq_len // kv.tokens_per_block), max(1, CPU_POOL_BYTES // per_block)
            )
        return blocks

    def _backend_cls(self) -> type[AttentionBackend]:
        sparse = self.args.sparse_attention_config
        if sparse is None:
            return AttentionBackend
        cls = lookup(sparse.algorithm).backend_cls
        if cls is None:
            raise ConfigError(f"{sparse.algorithm!r} has no attention backend", "sparse_attention_config.algorithm")
        return cls

    def _activation_bytes(self) -> int:
        # Peak activations of a max_num_tokens prefill: hidden states, q/k/v, the MLP's three
        # intermediate tensors, plus the logits of a full decode batch.
        c = self.hf_config
        heads = (c.num_attention_heads + 2 * c.num_key_value_heads) * self.model.shape.head_dim
        per_token = 4 * c.hidden_size + heads + 3 * c.intermediate_size
        elem = torch.empty((), dtype=self.dtype).element_size()
        logits = 4 * c.vocab_size * min(self.args.max_batch_size, 2048)
        # A chunk past the first reads back its layer's K/V of the prompt so far (and joins the chunk's to it).
        kv_dim = c.num_key_value_heads * self.model.shape.head_dim
        earlier = 4 * self.max_seq_len * kv_dim * elem if self.args.enable_chunked_prefill else 0
        return self.args.max_num_tokens * per_token * elem + logits + earlier + (1 << 30)

    def _build_backend(self, shape: ModelShape, use_kernels: bool) -> AttentionBackend:
        return self._backend_cls()(shape, self.pool, use_kernels, self.args.sparse_attention_config, self.comm)

    def _eos_ids(self) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return self.checkpoint.eos_token_ids() | ({eos} if eos is not None else set())

    # ---- requests -------------------------------------------------------------------------------

    def new_sequence(self, prompt_token_ids: list[int], params: SamplingParams) -> Sequence:
        """Validate a request and build its Sequence; raises RequestError before any work."""
        params.validate()
        if not prompt_token_ids:
            raise RequestError("the prompt is empty")
        vocab = self.hf_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise RequestError(f"prompt token ids must be in [0, {vocab})")
        n = len(prompt_token_ids)
        if n + params.max_tokens > self.max_seq_len:
            raise RequestError(
                f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) exceeds max_seq_len ({self.max_seq_len})"
            )
        seq = Sequence(next(self._ids), list(prompt_token_ids), params, arrival_time=time.perf_counter())
        seq.kept_prompt_len = self.backend.kept_len(n)
        seq.keeps_history = self.backend.keeps_history
        self.scheduler.check_fits(seq)
        seq.generator = torch.Generator(self.device)
        # An unseeded request draws its seed from the OS: torch.seed() would reseed the process's global generators.
        seq.generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        return seq

    def add(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def abort(self, seq: Sequence, reason: str = "abort") -> None:
        if not seq.is_finished:
            self._finish(seq, reason)

    @property
    def has_work(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running or self._inflight)

    # ---- one step -------------------------------------------------------------------------------

    def step(self) -> list[Update]:
        """Run one step and return what it did to each request. With the overlap scheduler, a greedy decode step
        is launched and the host returns the step before it, whose tokens it reads while the device computes."""
        start = time.perf_counter()
        if self._inflight is not None and not self._can_follow():
            return self._land()  # its tokens are needed on the host before the next step can be built
        # Following a step in flight, nobody is admitted (`_can_follow` found no one who fits; a request that a stop
        # token in flight makes room for joins the step after).
        batch = self.scheduler.schedule(admit=self._inflight is None)
        if not batch.sequences:
            return self._land() if self._inflight is not None else []
        if self.device.type == "cuda" and self._inflight is None:
            torch.cuda.reset_peak_memory_stats(self.device)  # for this iteration's gpuPeakMemUsage
        overlap = self._overlappable(batch)
        emitting = batch.emitting  # a prompt's last chunk and the decodes: the runner's logits rows
        try:
            if self.workers is not None:
                self.workers.check()
                self.comm.broadcast(("step", StepInput.of(batch, self._released)))
                self._released = []
            logits = self.runner.run(batch, self._feed(batch))
            if overlap:
                launched = _Inflight.launch(batch.generations, logits, start, self._token_buffers)
            else:
                tokens = sample(logits, emitting)
                _force(logits, emitting, tokens)
                _logprobs(logits, emitting, tokens)
        except Exception as e:  # a failed step fails its requests, never the engine
            self._inflight = None  # its requests are this step's
            failure = self.workers and self.workers.failure
            for seq in batch.sequences:
                seq.error = failure or f"{type(e).__name__}: {e}"
                self._finish(seq, "error")
            return [Update(seq, finished=True) for seq in batch.sequences]
        if overlap:
            for seq in batch.generations:
                seq.inflight += 1
            updates = self._land() if self._inflight is not None else []
            self._inflight = launched
            return updates
        return self._record(batch, tokens, logits, start)

    # ---- the overlap scheduler (TensorRT-LLM's): the host's bookkeeping of step n while step n+1 runs --------

    def _eligible(self, seq: Sequence) -> bool:
        p = seq.sampling_params
        return p.greedy and seq.forced_token_ids is None and not p.return_generation_logits and p.logprobs is None

    def _overlappable(self, batch: Any) -> bool:
        """Whether this step may run ahead of the host: greedy decode only (the token is an argmax the next step
        can read on the device), one rank (the workers follow rank 0's host-built steps)."""
        return (
            not self.args.disable_overlap_scheduler
            and self.workers is None
            and not batch.contexts
            and all(self._eligible(seq) for seq in batch.generations)
        )

    def _can_follow(self) -> bool:
        """Whether the next step can be launched before the one in flight lands: no waiting request would be admitted
        (a context step is built on the host; one the full batch or pool keeps waiting does not stop the overlap) and
        no running request ends by length with the token in flight."""
        return not self.scheduler.can_admit() and all(
            seq.prefilled
            and self._eligible(seq)
            and len(seq.output_token_ids) + seq.inflight < seq.sampling_params.max_tokens
            for seq in self.scheduler.running
        )

    def _feed(self, batch: Any) -> Optional[Feed]:
        if self._inflight is None:
            return None
        rows = {seq.request_id: i for i, seq in enumerate(self._inflight.seqs)}
        return Feed(self._inflight.tokens, [rows[seq.request_id] for seq in batch.generations])

    def _land(self) -> list[Update]:
        """The step in flight's tokens, appended (requests that finished meanwhile drop theirs)."""
        flight, self._inflight = self._inflight, None
        kept = [(seq, tok) for seq, tok in zip(flight.seqs, flight.read()) if not seq.is_finished]
        if not kept:
            return []
        for seq, _ in kept:
            seq.inflight -= 1
        batch = Batch([], [seq for seq, _ in kept])
        # Wall time since the previous step landed: with steps overlapping, what one step costs.
        return self._record(batch, [tok for _, tok in kept], None, max(flight.start, self._last_landed))

    def _record(self, batch: Any, tokens: list[int], logits: Optional[torch.Tensor], start: float) -> list[Update]:
        """A finished step's bookkeeping: tokens appended, requests finished, counters and iteration stats."""
        emitting = batch.emitting
        for i, seq in enumerate(emitting):
            if seq.sampling_params.return_generation_logits:
                seq.logits.append(logits[i].cpu())
        for seq in batch.contexts:
            if not seq.prefilled:  # a chunk of a prompt that goes on in the next steps
                continue
            self.scheduler.finish_prefill(seq)  # a chunked prompt's blocks past what stage 1 kept go back
            self.kept_tokens.append((seq.prompt_len, seq.kept_prompt_len))
            self.totals["prompt_tokens"] += seq.prompt_len
            self.totals["cached_prompt_tokens"] += seq.cached_len
            self.scheduler.cache_blocks(seq)  # its prompt's full blocks, for requests that share the prefix
        self.totals["peak_batch"] = max(self.totals["peak_batch"], len(batch.sequences))
        if batch.generations:
            self.totals["decode_steps"] += 1
            costs = [self._decode_cost(s.cache_len) for s in batch.generations]
            self.totals["tokens_attended"] += sum(c[0] for c in costs) / len(costs)
            self.totals["attention_bytes"] += sum(c[1] for c in costs) / len(costs)
        updates = [self._append(seq, tok) for seq, tok in zip(emitting, tokens)]
        self.iteration += 1
        self._last_landed = time.perf_counter()
        seconds = self._last_landed - start  # the sampled tokens were read back: the GPU work is done
        kind = "prefill" if batch.contexts else "decode"
        self.totals[f"{kind}_step_seconds"] += seconds
        self.totals[f"{kind}_step_count"] += 1
        if not batch.contexts:
            self.totals["decode_step_requests"] += len(batch.generations)
        self.stats.append(self._iteration_stats(batch, seconds))
        return updates

    def _decode_cost(self, cache_len: int) -> tuple[int, int]:
        """(tokens attended, bytes read) by a sequence's decode step over `cache_len` cached tokens, remembered: both
        depend on the length alone, and asking the backend for every request at every step was half the host's
        bookkeeping at 256 requests."""
        cost = self._decode_costs.get(cache_len)
        if cost is None:
            cost = (self.backend.attended_tokens(cache_len), self.backend.decode_read_bytes(cache_len))
            self._decode_costs[cache_len] = cost
        return cost

    def _append(self, seq: Sequence, token: int) -> Update:
        p = seq.sampling_params
        seq.output_token_ids.append(token)
        if seq.first_token_time is None:
            seq.first_token_time = time.perf_counter()
        self.totals["generated_tokens"] += 1
        update = Update(seq, [token])
        eos = not p.ignore_eos and (token == p.end_id if p.end_id is not None else token in self.eos_ids)
        if eos or token in p.stop_token_ids:
            self._finish(seq, "stop")
        elif len(seq.output_token_ids) >= p.max_tokens:
            self._finish(seq, "length")
        update.finished = seq.is_finished
        return update

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        seq.finish_time = time.perf_counter()
        seq.cache_len -= seq.inflight  # a step in flight wrote a token it will not keep
        seq.inflight = 0
        self.backend.release(seq.block_table)
        if self.workers is not None:
            self._released.append(seq.request_id)
        self.scheduler.finish(seq)

    # ---- tensor parallelism -----------------------------------------------------------------------

    def follow(self) -> None:
        """A worker rank's loop: run each step rank 0 broadcasts, until it says stop."""
        live: dict[int, list[int]] = {}  # request -> its block table, as rank 0 last sent it
        history: dict[int, list[int]] = {}  # request -> its prompt's blocks (rocket_mt), sent with its context
        while True:
            kind, payload = self.comm.broadcast()
            if kind == "stop":
                return
            for request_id in payload.released if kind == "step" else payload:
                history.pop(request_id, None)
                table = live.pop(request_id, None)
                if table is not None:
                    self.backend.release(table)
            if kind == "blocks":
                self.comm.gather(sum(map(len, live.values())) + sum(map(len, history.values())))
                continue
            batch = payload.batch()
            for seq in batch.sequences:
                live[seq.request_id] = seq.block_table
            for seq in batch.contexts:
                if seq.history_table:
                    history[seq.request_id] = seq.history_table
            self.runner.run(batch)

    def blocks_per_rank(self) -> list[int]:
        """KV blocks each rank holds for live requests (rank 0's allocator; the workers' view of it). On the
        engine's thread only (LLM.snapshot): it shares the workers' channel with the steps."""
        if self.workers is None:
            return [self.pool.allocator.num_used]
        self.workers.check()
        self.comm.broadcast(("blocks", self._released))
        self._released = []
        return [self.pool.allocator.num_used, *self.comm.gather(0)[1:]]

    def shutdown(self) -> None:
        """Stop the worker ranks and give the memory back (weights, KV pool, CUDA graphs), so an LLM built next in
        the same process finds it free; the counters and the block allocator stay for the last stats."""
        if self.workers is not None:
            self.workers.stop(self.comm)
        for name in ("runner", "backend", "model"):
            self.__dict__.pop(name, None)
        pool = self.__dict__.get("pool")
        if pool is not None:
            pool.k = pool.v = torch.empty(0)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- stats ----------------------------------------------------------------------------------

    def _iteration_stats(self, batch: Any, seconds: float) -> dict[str, Any]:
        alloc = self.pool.allocator
        stats: dict[str, Any] = {
            "iter": self.iteration,
            "iterLatencyMS": seconds * 1e3,
            "numActiveRequests": len(self.scheduler.running),
            "numQueuedRequests": len(self.scheduler.waiting),
            "maxNumActiveRequests": self.args.max_batch_size,
            "inflightBatchingStats": {
                "numContextRequests": len(batch.contexts),
                "numGenRequests": len(batch.generations),
                "numCtxTokens": batch.context_tokens,
            },
            "kvCacheStats": {
                "maxNumBlocks": alloc.num_blocks,
                "freeNumBlocks": alloc.num_free,
                "usedNumBlocks": alloc.num_used,
                "tokensPerBlock": self.pool.tokens_per_block,
                # The prefix cache (enable_block_reuse): prompt blocks found / not found, since the start.
                "reusedBlocks": alloc.hit_blocks,
                "missedBlocks": alloc.queried_blocks - alloc.hit_blocks,
                "cacheHitRate": alloc.hit_blocks / alloc.queried_blocks if alloc.queried_blocks else 0.0,
            },
        }
        if self.device.type == "cuda":
            stats["gpuMemUsage"] = torch.cuda.memory_allocated(self.device)
            stats["gpuPeakMemUsage"] = torch.cuda.max_memory_allocated(self.device)  # during this iteration
            self.totals["gpu_peak_bytes"] = max(self.totals["gpu_peak_bytes"], stats["gpuPeakMemUsage"])
        stats["sparseAttentionStats"] = self.sparse_stats()
        return stats

    def sparse_stats(self) -> dict[str, Any]:
        """Counters of the compression: what eviction kept, side-cache use, tokens attended per step."""
        steps = self.totals["decode_steps"]
        prompt = sum(p for p, _ in self.kept_tokens)
        kept = sum(k for _, k in self.kept_tokens)
        return {
            "algorithm": self.args.sparse_attention_config.algorithm if self.args.sparse_attention_config else "dense",
            "lastKeptPromptTokens": self.kept_tokens[-1][1] if self.kept_tokens else 0,
            "keptPromptFraction": kept / prompt if prompt else 1.0,
            "promptTokensEvicted": prompt - kept,
            "kvBlocksUsed": self.pool.allocator.num_used,
            "ktBlocksUsed": self.pool.allocator.num_used if self.uses_kt_cache else 0,
            "meanTokensAttendedPerStep": self.totals["tokens_attended"] / steps if steps else 0.0,
            # What a sequence's decode step reads for attention (all layers), and that as tokens of K/V.
            "meanAttentionBytesPerStep": self.totals["attention_bytes"] / steps if steps else 0.0,
            "meanAttentionTokensEquivalentPerStep": (
                self.totals["attention_bytes"] / steps / self.token_kv_bytes if steps else 0.0
            ),
        }


def follow_as_worker(args: LlmArgs, device: torch.device, comm: Communicator) -> None:
    """A tensor-parallel worker rank's life (tp_worker.py starts it): its engine, following rank 0's steps."""
    LLMEngine(args, device, comm).follow()


@dataclass
class _Inflight:
    """A greedy decode step launched and not landed: its requests in row order, its tokens on the device and
    their copy on the way to the host."""

    seqs: list[Sequence]
    tokens: torch.Tensor
    host: torch.Tensor
    done: Optional[Any]  # the CUDA event after the copy (None on the CPU, where it is done already)
    start: float

    @classmethod
    def launch(cls, seqs: list[Sequence], logits: torch.Tensor, start: float, buffers: list) -> "_Inflight":
        tokens = greedy_tokens(logits)
        if not tokens.is_cuda:
            return cls(seqs, tokens, tokens, None, start)
        # Pinned, so the copy does not wait for the stream; two buffers in turn (the previous step's is read
        # after this one is launched).
        buffers.reverse()
        if buffers[0].numel() < len(seqs):
            buffers[0] = torch.empty(max(len(seqs), 2 * buffers[0].numel()), dtype=torch.int64, pin_memory=True)
        host = buffers[0][: len(seqs)]
        host.copy_(tokens, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return cls(seqs, tokens, host, done, start)

    def read(self) -> list[int]:
        if self.done is not None:
            self.done.synchronize()
        return self.host.tolist()


def _logprobs(logits: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> None:
    """Each sequence that asks for logprobs: its new token's, and its top alternatives' (raw logits)."""
    rows = [i for i, seq in enumerate(seqs) if seq.sampling_params.logprobs is not None]
    if rows:
        found = logprobs_of(logits[rows], [tokens[i] for i in rows], [seqs[i].sampling_params.logprobs for i in rows])
        for i, entry in zip(rows, found):
            seqs[i].logprobs.append(entry)


def _force(logits: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> None:
    """Replace the sampled token of every scoring sequence by its forced one, recording its log-probability."""
    rows = [i for i, seq in enumerate(seqs) if seq.forced_token_ids is not None]
    if not rows:
        return
    forced = [seqs[i].forced_token_ids[len(seqs[i].output_token_ids)] for i in rows]
    picked = logits[rows].float()
    logprobs = torch.log_softmax(picked, dim=-1)[torch.arange(len(rows)), forced].tolist()
    greedy = (picked.argmax(-1) == torch.tensor(forced, device=picked.device)).tolist()
    for i, token, logprob, top in zip(rows, forced, logprobs, greedy):
        seqs[i].forced_logprobs.append(logprob)
        seqs[i].forced_greedy.append(top)
        tokens[i] = token
