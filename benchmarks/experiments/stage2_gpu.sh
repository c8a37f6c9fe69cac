#!/usr/bin/env bash
# Issues 33 and 34 on the GPU, in one device call from the repo root (.whl carried): the KT-layout, selection and
# chunk-attention GPU tests, the stage-2 kernels at 124 requests and at batch 1 (benchmarks/experiments/stage2_batch.py),
# RocketKV's decode step at 124 requests (8k prompts: after eviction the step is the 32k one's), 128k batch 1 against
# dense in bf16 and with FP8 weights, and a lone 128k prompt prefilled in 8192-token chunks. The kernels part times
# the bounds pass's variants and the batch, b1 and fp8 parts run the fastest at their batch
# (benchmarks/experiments/bench_patched.py). Each part has a time
# limit; PARTS picks some of: tests kernels splits batch b1 fp8 dense128 dense32 dense32max prefill (default: all, in
# that order); splits times dense decode's split rule at small batches of long sequences (benchmarks/experiments/dense_splits.py),
# dense128 and dense32max run dense at its largest batch of 128k and 32k prompts, dense32 at 10 requests of 32k.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
PARTS=${PARTS:-"tests kernels splits batch b1 fp8 dense128 dense32 dense32max prefill"}
source benchmarks/device_env.sh || exit 1
B="python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights"
R=configs/rocket-long-context.yaml
for part in $PARTS; do
  echo "== $part"
  case $part in
    tests) timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_kt_cache.py tests/test_prefix_cache.py \
             tests/test_paged_decode.py -k "gpu or searches_agree or sign_rule or predict_pages or official_variant or splits" 2>&1 | tail -4 ;;
    kernels) timeout 240 python3 benchmarks/experiments/stage2_batch.py --json "$OUT/stage2.json" --best "$OUT/best" 2>&1 \
               | grep -v Warn ;;
    splits) timeout 170 python3 benchmarks/experiments/dense_splits.py --json "$OUT/splits.json" 2>&1 | grep -v Warn ;;
    batch) timeout 120 python3 benchmarks/experiments/bench_patched.py "$(cat "$OUT/best-124.txt" 2>/dev/null)" \
             --arch llama-3.1-8b --random-weights --config $R --input-len 8192 --output-len 256 --batch-size 124 \
             --json "$OUT/rocket-b124.json" 2>&1 | tail -1 ;;
    b1) timeout 110 python3 benchmarks/experiments/bench_patched.py "$(cat "$OUT/best-1.txt" 2>/dev/null)" \
          --arch llama-3.1-8b --random-weights --config $R --input-len 131072 --output-len 64 --batch-size 1 \
          --compare dense --json "$OUT/b1-128k.json" 2>&1 | tail -2 ;;
    fp8) timeout 110 python3 benchmarks/experiments/bench_patched.py "$(cat "$OUT/best-1.txt" 2>/dev/null)" \
           --arch llama-3.1-8b --random-weights --config $R --input-len 131072 --output-len 64 --batch-size 1 \
           --compare dense --fp8 --json "$OUT/b1-128k-fp8.json" 2>&1 | tail -2 ;;
    dense128) timeout 150 $B --config configs/dense.yaml --input-len 131072 --output-len 256 --max-batch \
                --json "$OUT/dense-max-128k.json" 2>&1 | tail -1 ;;
    dense32) timeout 90 $B --config configs/dense.yaml --input-len 32768 --output-len 256 --batch-size 10 \
               --json "$OUT/dense-b10-32k.json" 2>&1 | tail -1 ;;
    dense32max) timeout 100 $B --config configs/dense.yaml --input-len 32768 --output-len 256 --max-batch \
                  --json "$OUT/dense-max-32k.json" 2>&1 | tail -1 ;;
    prefill) timeout 90 $B --config $R --input-len 131072 --output-len 16 --batch-size 1 --enable_chunked_prefill \
               --max_num_tokens 8192 --json "$OUT/chunked-128k.json" 2>&1 | tail -1 ;;
  esac
done
