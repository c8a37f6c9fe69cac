#!/usr/bin/env bash
# Issues 33 and 34 on the GPU, in one device call from the repo root (.whl carried): the kernel, KT-layout and
# attention tests, the stage-2 kernels at the largest batch and at batch 1 (benchmarks/stage2_batch.py), RocketKV's
# decode step at 124 requests with a profile, and a lone 128k prompt's prefill one-step and in 8192-token chunks.
# PARTS picks some of: tests kernels batch prefill (default: all).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
PARTS=${PARTS:-"tests kernels batch prefill"}
source benchmarks/device_env.sh || exit 1
B="python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights"
R=configs/rocket-long-context.yaml
for part in $PARTS; do
  case $part in
    tests) python3 -m pytest -q -p no:cacheprovider tests/test_kt_cache.py tests/test_paged_decode.py \
             tests/test_prefix_cache.py tests/test_chunked_prefill.py tests/test_kv_cache.py 2>&1 | tail -6 ;;
    kernels) python3 benchmarks/stage2_batch.py --json "$OUT/stage2.json" 2>&1 | grep -v Warn ;;
    batch) $B --config $R --input-len 8192 --output-len 64 --batch-size 124 --profile "$OUT/prof-b124.txt" \
             --profile-batch 124 --json "$OUT/rocket-b124.json" 2>&1 | tail -3 ;;
    prefill) for chunked in "" "--enable_chunked_prefill --max_num_tokens 8192"; do
               $B --config $R --input-len 131072 --output-len 16 --batch-size 1 $chunked 2>&1 | tail -1
             done ;;
  esac
done
