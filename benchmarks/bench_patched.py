"""rocket-bench with module constants patched first, for A/B runs of one tree's variants on one machine:

    python benchmarks/bench_patched.py "rocket_trtllm.kernels.paged_decode:SPLIT_MIN_TOKENS=1048576" <rocket-bench args>

(comma-separated `module:ATTR=integer` items; an empty string patches nothing)."""

import importlib
import os
import sys

patches, sys.argv = sys.argv[1], [sys.argv[0], *sys.argv[2:]]
for item in filter(None, patches.split(",")):
    target, value = item.split("=")
    module, attr = target.split(":")
    mod = importlib.import_module(module)
    old = getattr(mod, attr)
    if type(old).__name__ == "constexpr":  # a Triton global read inside kernels: not part of the cache key
        setattr(mod, attr, type(old)(int(value)))
        os.environ["TRITON_CACHE_DIR"] = os.path.join(os.environ.get("TRITON_CACHE_DIR", "/tmp/triton"), item)
    else:
        setattr(mod, attr, int(value))

from rocket_trtllm.bench import main  # noqa: E402

main()
