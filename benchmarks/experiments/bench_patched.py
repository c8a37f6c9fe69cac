"""rocket-bench with module constants patched first, for A/B runs of one tree's variants on one machine:

    python benchmarks/experiments/bench_patched.py \
        "rocket_trtllm.kernels.paged_decode:SPLIT_MIN_TOKENS=1048576" <rocket-bench args>

(comma-separated `module:ATTR=integer` items; an empty string patches nothing)."""

import importlib
import sys

patches, sys.argv = sys.argv[1], [sys.argv[0], *sys.argv[2:]]
for item in filter(None, patches.split(",")):
    target, value = item.split("=")
    module, attr = target.split(":")
    setattr(importlib.import_module(module), attr, int(value))

from rocket_trtllm.bench import main  # noqa: E402

main()
