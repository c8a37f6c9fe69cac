#!/usr/bin/env bash
# The whole GPU session in one call: GPU tests, kernel bandwidth, and rocket-bench against dense.
# Run on the device machine from the repo root with .whl carried (see ../shared/tools/offline-wheels.sh).
# `bash benchmarks/experiments/gpu.sh check` runs the tests and kernel benchmarks only, `... bench` the rocket-bench runs.
# At 32k both methods run the largest batch their pool holds (--max-batch); 512 output tokens, because requests
# decode while the others prefill (1.4 s each) and an output of 128 or 320 ended the first requests before the
# last ones started (the largest batch that decoded together stayed near 100). RocketKV's ~140 prefills take
# ~3.5 minutes.
set -uo pipefail
PART=${1:-all}
OUT=${OUT:-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ "$PART" != bench ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_paged_decode.py tests/test_kt_cache.py tests/test_stage1.py \
    tests/test_layer_ops.py tests/test_llm.py tests/test_sparse.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
  python3 benchmarks/experiments/kernel_bandwidth.py --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.txt"
fi
[ "$PART" = check ] && exit 0
B="python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights --config configs/rocket-long-context.yaml"
$B --input-len 131072 --output-len 256 --batch-size 1 --compare dense --json "$OUT/bench_128k_b1.json" 2>&1 \
  | grep -v Loading | tee "$OUT/bench_128k_b1.txt"
$B --input-len 32768 --output-len 512 --max-batch --json "$OUT/bench_32k_rocket.json" 2>&1 \
  | grep -v Loading | tee "$OUT/bench_32k_rocket.txt"
python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights --config configs/dense.yaml --input-len 32768 \
  --output-len 512 --max-batch --json "$OUT/bench_32k_dense.json" 2>&1 | grep -v Loading | tee "$OUT/bench_32k_dense.txt"
