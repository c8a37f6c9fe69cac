#!/usr/bin/env bash
# EVAL.md's GPU sweep of the shipped model, in one device call from the repo root with .whl carried:
#   bash eval/sweep.sh            (writes $OUT/sweep.json after every run, then the table)
# SAMPLES, SEED, ALGORITHMS, BUDGETS, WINDOW and REDUCTION override the defaults (20, 0, all six, 128-1024, 32, max).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=$PWD:/tmp/site || exit 1
ln -sfn "$PWD/kernels" rocket_trtllm/kernels  # the installed package maps kernels/ and eval/ here; so do these links
ln -sfn "$PWD/eval" rocket_trtllm/eval
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m rocket_trtllm.eval.cli eval/model niah_single niah_multikey niah_multivalue variable_tracking \
  --lengths 8192 16384 --samples ${SAMPLES:-20} --seed ${SEED:-0} --sweep \
  --algorithms ${ALGORITHMS:-full rocket topk_oracle snapkv quest streamingllm} --budgets ${BUDGETS:-128 256 512 1024} \
  --window-size ${WINDOW:-32} --window-reduction ${REDUCTION:-max} \
  --json "$OUT/sweep.json" --markdown "$OUT/sweep.md" 2>&1 | grep -v "it/s]" | tee "$OUT/sweep.log"
