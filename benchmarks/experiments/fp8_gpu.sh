#!/usr/bin/env bash
# FP8 on the H100, in one device call from the repo root with .whl carried: bash benchmarks/experiments/fp8_gpu.sh
# RocketKV vs dense at 128k batch 1, Llama-3.1-8B architecture (random weights): bf16, FP8 weights, and FP8 KV
# cache (bf16 weights); then bf16 at 32k batch 1 (RUN_32K) and RocketKV's KV dtypes at batch 128 (RUN_BATCH). The bf16 and RocketKV runs also profile 32 decode steps (--profile).
# sync: bf16 with the overlap scheduler off; nopdl: bf16 without programmatic dependent
# launch (ROCKET_PDL=0). VARIANTS (default "bf16 sync fp8w fp8kv"), METHODS
# ("rocket-long-context dense"), TESTS (1) and RUN_32K (1) pick a subset (two runs in one call add to the same
# results; all of it takes longer than one 10-minute call: RUN_32K=0 there, the 32k run in the next).
# Everything lands in $OUT/fp8/ and, as one file, $OUT/fp8.tgz (a device call brings back only a few files).
set -uo pipefail
DEST=${OUT:-out}; OUT=/tmp/fp8-results; mkdir -p "$OUT" "$DEST"
trap 'tar czf "$DEST/fp8.tgz" -C /tmp fp8-results' EXIT
source benchmarks/device_env.sh || exit 1
if [ "${TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_fp8.py tests/test_paged_decode.py tests/test_kt_cache.py \
    tests/test_layer_ops.py tests/test_overlap.py "tests/test_llm.py::test_cuda_graph_decode_matches_eager" \
    > "$OUT/tests.txt" 2>&1
  tail -3 "$OUT/tests.txt"
fi
# The pieces one by one: paged decode over an fp8 cache per tile shape, quantization, page selection, and the
# decode GEMMs (cuBLAS and the Triton GEMV's tiles, bf16 and fp8 weights).
K=${KERNELS:-fp8}  # none: skip
[ "$K" = none ] || timeout 300 python3 benchmarks/experiments/kernel_bandwidth.py --only $K --json "$OUT/kernels-$K.json" > "$OUT/kernels-$K.txt" 2>&1
for kv in auto fp8; do  # the same pool dtype for both methods
  for name in rocket-long-context dense; do
    sed "s/^kv_cache_config:/kv_cache_config:\n  dtype: $kv/" configs/$name.yaml > /tmp/$name-$kv.yaml
  done
done
for name in rocket-long-context dense; do  # bf16 with the overlap scheduler off, for its share of the step
  (cat configs/$name.yaml; echo "disable_overlap_scheduler: true") > /tmp/$name-sync.yaml
done
B="timeout 200 python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights --batch-size 1"
declare -A FLAGS=([bf16]="auto:" [sync]="sync:" [fp8w]="auto:--fp8" [fp8kv]="fp8:" [nopdl]="auto:")
for name in ${VARIANTS:-bf16 sync fp8w fp8kv}; do
  IFS=: read -r kv flag <<< "${FLAGS[$name]}"
  unset ROCKET_PDL
  [ "$name" = nopdl ] && export ROCKET_PDL=0  # bf16, kernels launched plainly
  for method in ${METHODS:-rocket-long-context dense}; do
    profile=(); [ "$name" = bf16 ] || [ "$method" = rocket-long-context ] && profile=(--profile "$OUT/profile-128k-$name-$method.txt")
    $B --input-len 131072 --output-len 128 $flag --config /tmp/$method-$kv.yaml "${profile[@]}" \
      --json "$OUT/128k-$name-$method.json" 2>&1 | grep -v Loading | tee "$OUT/128k-$name-$method.txt"
  done
done
if [ "${RUN_32K:-1}" = 1 ]; then
  $B --input-len 32768 --output-len 128 --config configs/rocket-long-context.yaml --compare dense \
    --profile "$OUT/profile-32k" --json "$OUT/32k-bf16.json" 2>&1 | grep -v Loading | tee "$OUT/32k-bf16.txt"
fi
# RUN_BATCH=1: RocketKV with bf16 and fp8 KV at 128 requests of 8k-token prompts (each keeps 2048 tokens, as at
# 32k or 128k): there its step reads 128 x 33 MB of K/V, where at batch 1 it reads 33 MB.
if [ "${RUN_BATCH:-0}" = 1 ]; then
  for kv in auto fp8; do
    timeout 200 python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights --batch-size 128 \
      --input-len 8192 --output-len 256 --config /tmp/rocket-long-context-$kv.yaml --json "$OUT/batch128-$kv.json" \
      2>&1 | grep -v Loading | tee "$OUT/batch128-$kv.txt"
  done
fi
