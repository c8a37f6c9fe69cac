#!/usr/bin/env bash
# Tensor parallelism on nvidia-h200-x2, in one device call from the repo root with .whl carried:
#   bash benchmarks/experiments/tp_gpu.sh          (PART=check: the exactness check only; PART=bench: the rocket-bench runs only)
# 1. benchmarks/experiments/tp_check.py: TP2 vs TP1 logits in bf16 beside TP1's bf16 vs float32 (dense and RocketKV).
# 2. Llama-3.1-8B arch, 128k prompt, batch 1: TP2 vs TP1 decode step (TP1 on one GPU of the same machine).
# 3. Llama-3.1-70B arch TP2: RocketKV vs dense at 128k batch 1, and 32k prompts at the largest batch dense fits
#    vs RocketKV at 64.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh || exit 1
# NVLink multicast stays off on these machines (KINDS.md), in every process the ranks spawn too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
PART=${PART:-all}
if [ "$PART" != bench ]; then
  python3 benchmarks/experiments/tp_check.py --tp 2 --json "$OUT/tp_check.json" 2>&1 | grep -v "Processed\|Writing" \
    | tee "$OUT/tp_check.txt"
fi
[ "$PART" = check ] && exit 0
B8="python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights --config configs/dense.yaml"
for tp in 1 2; do
  $B8 --tp-size $tp --input-len 131072 --output-len 128 --batch-size 1 --json "$OUT/8b_128k_tp$tp.json" 2>&1 \
    | grep -v Loading | tee "$OUT/8b_128k_tp$tp.txt"
done
B70="python3 -m rocket_trtllm.bench --arch llama-3.1-70b --random-weights --tp-size 2"
$B70 --config configs/rocket-long-context.yaml --input-len 131072 --output-len 128 --batch-size 1 --compare dense \
  --json "$OUT/70b_128k_b1.json" 2>&1 | grep -v Loading | tee "$OUT/70b_128k_b1.txt"
$B70 --config configs/rocket-long-context.yaml --input-len 32768 --output-len 128 --batch-size 64 \
  --json "$OUT/70b_32k_rocket.json" 2>&1 | grep -v Loading | tee "$OUT/70b_32k_rocket.txt"
$B70 --config configs/dense.yaml --input-len 32768 --output-len 128 --max-batch \
  --json "$OUT/70b_32k_dense.json" 2>&1 | grep -v Loading | tee "$OUT/70b_32k_dense.txt"
