#!/usr/bin/env bash
# EVAL.md's real-model sweep: SmolLM2-135M-Instruct (Q4_1 GGUF) on real prose, in one device call from the repo
# root with .whl carried:   MODEL=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf PROSE=/tmp/kjv.txt bash eval/real_sweep.sh
# (rocket-fetch smollm2 / rocket-fetch prose give both paths here.) Writes $OUT/real-seed$SEED.json after every
# run, then the table. TASKS, LENGTHS, SAMPLES, SEED, ALGORITHMS, BUDGETS and RATIO override the defaults
# (passkey niah_single doc_ppl; 2048 4096 7000; 40; 0; all six; 128-1024; 8).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh || exit 1
SEED=${SEED:-0}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m rocket_trtllm.eval.cli "$MODEL" ${TASKS:-passkey niah_single doc_ppl} --haystack prose --prose "$PROSE" \
  --lengths ${LENGTHS:-2048 4096 7000} --samples ${SAMPLES:-40} --seed "$SEED" --max-tokens 16 --sweep \
  --algorithms ${ALGORITHMS:-full rocket topk_oracle snapkv quest streamingllm} --budgets ${BUDGETS:-128 256 512 1024} \
  --prompt-ratio ${RATIO:-8} --json "$OUT/real-seed$SEED.json" --markdown "$OUT/real-seed$SEED.md" 2>&1 \
  | grep -v "it/s]" | tee "$OUT/real-seed$SEED.log"
