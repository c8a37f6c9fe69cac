#!/usr/bin/env bash
# docs/log/benchmarks.md's serving runs: rocket-serve with RocketKV vs dense, each loaded by rocket-bench serve at several
# request rates on two workloads, one device call per workload, from the repo root with .whl carried:
#   WORKLOADS=decode bash benchmarks/serve_gpu.sh      (then WORKLOADS=prefill in a second call)
# decode: 8192-token prompts, 2048-token outputs; prefill: 32768-token prompts, 256-token outputs.
# Each (method, rate) sends about rate x (one request's lifetime + 30 s) prompts, so a server past its capacity
# shows a growing queue (TTFT) and not only TPOT. Writes $OUT/serve-WORKLOAD.json (every run), the server logs,
# /metrics after each method (warm-up included) (its rocket_step_seconds_total gives the prefill share of step time), and
# $OUT/serve-WORKLOAD.png. MODEL (default: the Llama-3.1-8B architecture, random weights), LOAD (dummy),
# ROCKET and DENSE (configs), DECODE / PREFILL ("input output"), and the run lists below ("rate:prompts ...") override.
# A steady state without waiting for a Poisson queue to build: "inf:PROMPTS@N" keeps N requests in flight (each
# finished one replaced at once), e.g. the decode-heavy capacities, N = what each pool holds:
#   DECODE_ROCKET="inf:164@82" DECODE_DENSE="inf:74@37" WORKLOADS=decode bash benchmarks/serve_gpu.sh
set -uo pipefail
source benchmarks/serve_env.sh || exit 1
DECODE_DENSE=${DECODE_DENSE:-0.5:32 1:64}
DECODE_ROCKET=${DECODE_ROCKET:-1:32 2:96}
PREFILL_DENSE=${PREFILL_DENSE:-0.25:12 0.5:16}
PREFILL_ROCKET=${PREFILL_ROCKET:-0.25:12 0.5:16}
SLO_TPOT=${SLO_TPOT:-50}

run() {  # name config workload input output ttft_slo_ms rate:prompts...
  local name=$1 config=$2 workload=$3 input=$4 output=$5 ttft=$6; shift 6
  local start=$SECONDS
  start_server "$name-$workload" "$config" --max_seq_len $((input + output + 64)) --max_num_tokens $((input + 256)) \
    || return 1
  echo "== $name $workload: server up in $((SECONDS - start)) s"
  # Warm-up, not recorded: compiles the Triton kernels and captures the first CUDA graphs (else the first
  # requests of the first rate wait tens of seconds behind the compiler).
  python3 -m rocket_trtllm.bench serve --base-url "http://127.0.0.1:$PORT/v1" --input-len "$input" --output-len 32 \
    --num-prompts "${WARMUP:-8}" --request-rate inf --seed 1 > /dev/null 2>&1
  echo "== warm after $((SECONDS - start)) s"
  for spec in "$@"; do  # rate:prompts, or rate:prompts@concurrency (a closed loop holding that many in flight)
    local rate=${spec%%:*} rest=${spec#*:} limit=()
    [[ $rest == *@* ]] && limit=(--max-concurrency "${rest#*@}")
    python3 -m rocket_trtllm.bench serve --base-url "http://127.0.0.1:$PORT/v1" --label "$name" \
      --input-len "$input" --output-len "$output" --num-prompts "${rest%@*}" --request-rate "$rate" "${limit[@]}" \
      --slo-tpot-ms "$SLO_TPOT" --slo-ttft-ms "$ttft" --json "$OUT/serve-$workload.json"
  done
  curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-$name-$workload.txt"
  grep '^rocket_step_seconds_total\|^rocket_batch_size_max\|^rocket_kv_blocks_total' "$OUT/metrics-$name-$workload.txt"
  kill "$server_pid"; wait "$server_pid"
}

for workload in ${WORKLOADS:-decode prefill}; do
  if [ "$workload" = decode ]; then
    run rocket "${ROCKET:-configs/rocket-long-context.yaml}" decode ${DECODE:-8192 2048} "${TTFT_DECODE:-5000}" $DECODE_ROCKET
    run dense "${DENSE:-configs/dense.yaml}" decode ${DECODE:-8192 2048} "${TTFT_DECODE:-5000}" $DECODE_DENSE
  else
    run dense "${DENSE:-configs/dense.yaml}" prefill ${PREFILL:-32768 256} "${TTFT_PREFILL:-10000}" $PREFILL_DENSE
    run rocket "${ROCKET:-configs/rocket-long-context.yaml}" prefill ${PREFILL:-32768 256} "${TTFT_PREFILL:-10000}" $PREFILL_ROCKET
  fi
  python3 -c "import json, sys
from rocket_trtllm.serve.benchmark import plot, sustained
runs = json.load(open(sys.argv[1]))['runs']
print('sustained (TPOT p99 <= %s ms, TTFT p99 <= %s ms):' % (sys.argv[3], sys.argv[4]),
      sustained(runs, float(sys.argv[3]), float(sys.argv[4])))
plot(runs, sys.argv[2])" "$OUT/serve-$workload.json" "$OUT/serve-$workload.png" "$SLO_TPOT" \
    "$([ "$workload" = decode ] && echo "${TTFT_DECODE:-5000}" || echo "${TTFT_PREFILL:-10000}")"
done
