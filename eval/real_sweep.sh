#!/usr/bin/env bash
# EVAL.md's real-model sweep: SmolLM2-135M-Instruct (Q4_1 GGUF) on real prose, in one device call from the repo
# root with .whl carried:   MODEL=/tmp/SmolLM2-135M-Instruct.Q4_1.gguf PROSE=/tmp/kjv.txt bash eval/real_sweep.sh
# (rocket-fetch smollm2 / rocket-fetch prose give both paths here.) A 135M model leaves the GPU idle between
# its small kernels, so each method runs in its own process, side by side, each with a slice of the memory;
# every process writes its JSON after each run, merged at the end into $OUT/real-seed$SEED.json and the table.
# TASKS, LENGTHS, SAMPLES, SEED, ALGORITHMS, BUDGETS, RATIO and CHAT override the defaults (passkey doc_ppl;
# 2048 4096 7000; 40; 0; all six; 128-1024; 8; off: the prompt as it is, which this model answers better).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh || exit 1
SEED=${SEED:-0}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
printf 'kv_cache_config:\n  free_gpu_memory_fraction: 0.12\n' > /tmp/slice.yaml
for algorithm in ${ALGORITHMS:-full rocket topk_oracle snapkv quest streamingllm}; do
  python3 -m rocket_trtllm.eval.cli "$MODEL" ${TASKS:-passkey doc_ppl} --haystack prose --prose "$PROSE" \
    --config /tmp/slice.yaml --chat-template ${CHAT:-off} --lengths ${LENGTHS:-2048 4096 7000} \
    --samples ${SAMPLES:-40} --seed "$SEED" --max-tokens 16 --sweep --algorithms "$algorithm" \
    --budgets ${BUDGETS:-128 256 512 1024} --prompt-ratio ${RATIO:-8} --json "/tmp/real-$SEED-$algorithm.json" \
    > "/tmp/real-$SEED-$algorithm.log" 2>&1 &
  sleep 20  # each process sizes its KV slice from the memory the ones before it left free
done
wait
python3 - "$OUT/real-seed$SEED.json" /tmp/real-"$SEED"-*.json <<'PY'
import json, sys
parts = [json.load(open(p)) for p in sys.argv[2:]]
rows = [r for p in parts for r in p["results"]]
json.dump({"args": parts[0]["args"], "results": rows}, open(sys.argv[1], "w"), indent=2)
PY
grep -h -E "budget=" /tmp/real-"$SEED"-*.log > "$OUT/real-seed$SEED.log"
python3 -m rocket_trtllm.eval.report "$OUT/real-seed$SEED.json" --markdown "$OUT/real-seed$SEED.md"
