#!/usr/bin/env bash
# BENCHMARKS.md's serving runs: rocket-serve with RocketKV vs dense, each loaded by rocket-bench serve at several
# request rates on two workloads, in one device call from the repo root with .whl carried:
#   WORKLOADS=decode bash benchmarks/serve_gpu.sh      (then WORKLOADS=prefill in a second call)
# decode: 8192-token prompts, 2048-token outputs; prefill: 32768-token prompts, 256-token outputs. Writes
# $OUT/serve-WORKLOAD.json (every run), server logs and /metrics, and $OUT/serve-WORKLOAD.png.
# MODEL (default: the Llama-3.1-8B architecture, random weights), LOAD (dummy), ROCKET and DENSE (configs),
# DECODE / PREFILL ("input output"), RATES_DECODE / RATES_PREFILL, PROMPTS (32) override.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
[ -n "${NO_DEVICE_ENV:-}" ] || source benchmarks/device_env.sh || exit 1
MODEL=${MODEL:-$(python3 -c "import pathlib, tempfile
from rocket_trtllm.bench import write_arch
print(write_arch('llama-3.1-8b', pathlib.Path(tempfile.mkdtemp())))")}
PORT=${PORT:-8123}
run() {  # name config workload input output rates...
  local name=$1 config=$2 workload=$3 input=$4 output=$5; shift 5
  python3 -m rocket_trtllm.serve.cli "$MODEL" --config "$config" --load_format "${LOAD:-dummy}" --port "$PORT" \
    --max_seq_len $((input + output + 64)) --max_num_tokens $((input + 256)) --log_level warning \
    > "$OUT/server-$name-$workload.log" 2>&1 &
  local pid=$!
  until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "rocket-serve $name failed: see $OUT/server-$name-$workload.log"; return 1; }
    sleep 1
  done
  python3 -m rocket_trtllm.bench serve --base-url "http://127.0.0.1:$PORT/v1" --label "$name" --input-len "$input" \
    --output-len "$output" --num-prompts "${PROMPTS:-32}" --request-rate "$@" --slo-tpot-ms 50 \
    --json "$OUT/serve-$workload.json"
  curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-$name-$workload.txt"
  kill "$pid"; wait "$pid"
}
for workload in ${WORKLOADS:-decode prefill}; do
  if [ "$workload" = decode ]; then lens=${DECODE:-8192 2048}; rates=${RATES_DECODE:-0.5 1 2 4 inf}
  else lens=${PREFILL:-32768 256}; rates=${RATES_PREFILL:-0.1 0.2 0.4 inf}; fi
  run dense "${DENSE:-configs/dense.yaml}" "$workload" $lens $rates
  run rocket "${ROCKET:-configs/rocket-long-context.yaml}" "$workload" $lens $rates
  python3 -c "import json, sys
from rocket_trtllm.serve.benchmark import plot
plot(json.load(open(sys.argv[1]))['runs'], sys.argv[2])" "$OUT/serve-$workload.json" "$OUT/serve-$workload.png"
done
