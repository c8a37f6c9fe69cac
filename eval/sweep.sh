#!/usr/bin/env bash
# docs/log/eval.md's GPU sweep of the shipped model, in one device call from the repo root with .whl carried:
#   bash eval/sweep.sh            (writes $OUT/sweep.json after every run, then the table)
# TASKS, SAMPLES, SEED, ALGORITHMS, BUDGETS, WINDOW, SCOPE and RATIO override the defaults (all four,
# 20, 0, all six, 128-1024, 32, kv_head, 8: rocket keeps RATIO x budget prompt tokens).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m rocket_trtllm.eval.cli eval/model ${TASKS:-niah_single niah_multikey niah_multivalue variable_tracking} \
  --lengths 8192 16384 --samples ${SAMPLES:-20} --seed ${SEED:-0} --sweep \
  --algorithms ${ALGORITHMS:-full rocket topk_oracle snapkv quest streamingllm} --budgets ${BUDGETS:-128 256 512 1024} \
  --window-size ${WINDOW:-32} --eviction-scope ${SCOPE:-kv_head} --prompt-ratio ${RATIO:-8} \
  --json "$OUT/sweep.json" --markdown "$OUT/sweep.md" 2>&1 | grep -v "it/s]" | tee "$OUT/sweep.log"
