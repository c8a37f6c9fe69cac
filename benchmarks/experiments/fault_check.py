"""rocket-bench with every Triton kernel launch and every CUDA-graph replay synchronized and checked: an
asynchronous CUDA fault (an illegal memory access) is named where it happens, with the faulting call's arguments.

    python benchmarks/experiments/fault_check.py [--static-eager] ROCKET-BENCH ARGS...

--static-eager runs what each CUDA graph would capture (the static-metadata forward) eagerly instead, with every
kernel checked: a fault there is a kernel's; a fault only in the replay is the graph's (e.g. a tensor it captured
was freed). Kernel launches inside a capture are not checked (a capture cannot synchronize).
"""

import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from rocket_trtllm import bench
from rocket_trtllm.kernels import cache_update, gemv, kt_predict, layer_ops, paged_decode
from rocket_trtllm.runtime.model_runner import ModelRunner

KERNEL_MODULES = (cache_update, gemv, kt_predict, layer_ops, paged_decode)
last = ["nothing yet"]


def describe(x: Any) -> str:
    if not isinstance(x, torch.Tensor):
        return repr(x)[:40]
    text = f"{tuple(x.shape)} {x.dtype} strides {x.stride()}"
    if not x.is_floating_point() and x.numel():
        text += f" values [{int(x.min())}, {int(x.max())}]"
    return text


def synchronize_or_exit(where: str, args: tuple = ()) -> None:
    try:
        torch.cuda.synchronize()
    except Exception as e:  # the context is lost: report and leave
        print(f"FAULT {where} (last good: {last[0]}): {e}", flush=True)
        for a in args:
            print("  ", describe(a), flush=True)
        os._exit(3)


def checked(name: str, fn: Callable) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        if not torch.cuda.is_available() or torch.cuda.is_current_stream_capturing():
            return fn(*args, **kwargs)
        synchronize_or_exit(f"before {name}")
        out = fn(*args, **kwargs)
        synchronize_or_exit(f"in {name}", args)
        last[0] = name
        return out

    return call


def check_kernels() -> None:
    """Every public function of the kernel modules, wherever it was imported, replaced by its checked version."""
    wrapped = {
        f: checked(f"{mod.__name__.rsplit('.', 1)[-1]}.{name}", f)
        for mod in KERNEL_MODULES
        for name, f in vars(mod).items()
        if inspect.isfunction(f) and f.__module__ == mod.__name__ and not name.startswith("_")
        and not name.endswith("_ref")
    }  # fmt: skip
    for name, mod in list(sys.modules.items()):
        if name.startswith("rocket_trtllm") and mod is not None:
            for attr, value in list(vars(mod).items()):
                if inspect.isfunction(value) and value in wrapped:
                    setattr(mod, attr, wrapped[value])


class EagerGraph:
    """Stands in for a captured graph: replay runs the static-metadata forward eagerly into the same output."""

    def __init__(self, runner: ModelRunner, bucket: int, width: int) -> None:
        self.runner, self.bucket, self.width = runner, bucket, width
        self.out = torch.empty(bucket, runner.model.config.vocab_size, device=runner.device)

    def replay(self) -> None:
        self.out.copy_(self.runner._forward_static(self.bucket, self.width))


def eager_capture(self: ModelRunner, bucket: int, width: int) -> None:
    self.static["tables"].fill_(self.pool.scratch_block)
    self.static["cache_lens"].fill_(1)
    graph = EagerGraph(self, bucket, width)
    self.graphs[bucket, width] = (graph, graph.out)


def checked_replays() -> None:
    replay = ModelRunner._replay

    def run(self: ModelRunner, bucket: int, width: int, batch: Any, feed: Any) -> torch.Tensor:
        out = replay(self, bucket, width, batch, feed)
        synchronize_or_exit(f"in the graph of batch bucket {bucket}, width {width} ({len(batch.generations)} rows)")
        last[0] = f"graph ({bucket}, {width})"
        return out

    ModelRunner._replay = run


def main() -> None:
    argv = sys.argv[1:]
    if "--static-eager" in argv:
        argv.remove("--static-eager")
        ModelRunner._capture = eager_capture
    check_kernels()
    checked_replays()
    bench.main(argv)


if __name__ == "__main__":
    main()
