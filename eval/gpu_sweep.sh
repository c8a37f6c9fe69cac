#!/usr/bin/env bash
# rocket-eval --sweep on the GPU with one process per (seed, algorithm), side by side: a small model leaves the
# GPU idle between its kernels, so the processes overlap (one after another is ~5x slower). Each writes its JSON
# after every run; at the end (or at DEADLINE seconds, stopping what still runs) they are merged, cells averaged
# over the seeds, into $OUT/$NAME.json, $OUT/$NAME.md and $OUT/$NAME.log. From the repo root, .whl carried:
#   MODEL=eval/model NAME=bytes TASKS="niah_single passkey" LENGTHS="8192" ARGS="--budget-mode bytes" \
#     bash eval/gpu_sweep.sh
# MODEL, NAME, TASKS, LENGTHS, SAMPLES (40), SEEDS ("0 1"), ALGORITHMS, BUDGETS (128-1024), KV_TOKENS (each
# process's pool; default: rocket-eval's own sizing), DEADLINE (540) and ARGS (any other rocket-eval flags).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
source benchmarks/device_env.sh || exit 1
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false  # a CPU core per process
NAME=${NAME:-sweep}
config=()
if [ -n "${KV_TOKENS:-}" ]; then
  printf 'kv_cache_config:\n  max_tokens: %s\n' "$KV_TOKENS" > "/tmp/$NAME.yaml"
  config=(--config "/tmp/$NAME.yaml")
fi
rm -f /tmp/"$NAME"-*.json /tmp/"$NAME"-*.log
pids=()
for seed in ${SEEDS:-0 1}; do
  for algorithm in ${ALGORITHMS:-full rocket rocket_official topk_oracle snapkv quest streamingllm}; do
    # shellcheck disable=SC2086  # TASKS, LENGTHS, BUDGETS and ARGS are word lists
    python3 -m rocket_trtllm.eval.cli "$MODEL" $TASKS "${config[@]}" --lengths $LENGTHS --samples "${SAMPLES:-40}" \
      --seed "$seed" --sweep --algorithms "$algorithm" --budgets ${BUDGETS:-128 256 512 1024} ${ARGS:-} \
      --json "/tmp/$NAME-$seed-$algorithm.json" > "/tmp/$NAME-$seed-$algorithm.log" 2>&1 &
    pids+=($!)
  done
done
( sleep "${DEADLINE:-540}"; pkill -f rocket_trtllm.eval.cli ) & watchdog=$!
wait "${pids[@]}"
kill "$watchdog" 2>/dev/null
grep -h -E "budget=|Error|error" /tmp/"$NAME"-*.log > "$OUT/$NAME.log"
python3 -m rocket_trtllm.eval.report /tmp/"$NAME"-*.json --json "$OUT/$NAME.json" --markdown "$OUT/$NAME.md"
