#!/usr/bin/env bash
# Issue 34's serving rows: rocket-serve under a decode-heavy load (SHORT-token prompts, NEW-token outputs, Poisson
# arrivals at each of RATES) in which every EVERY-th request is a LONG-token prompt, with one-step prefill and with
# CHUNK-token chunks, for RocketKV then dense; rocket-bench serve reports each run's TTFT, TPOT, ITL and goodput
# (TPOT <= SLO_TPOT ms, TTFT <= SLO_TTFT ms). From the repo root with .whl carried; at the defaults 3-4 minutes a
# run, two runs a method (one-step, chunked), so one device call per method: METHODS=rocket, then METHODS=dense.
#   METHODS=rocket bash benchmarks/chunked_serve.sh
# Writes $OUT/chunked-serve.json (every run), each server's step counts and times ($OUT/metrics-NAME.txt) and its
# log (the request mixes go to /tmp); benchmarks/chunked_serve_plot.py draws the runs where matplotlib is. MODEL
# (default: the Llama-3.1-8B architecture, random weights), LOAD (dummy), ROCKET and DENSE (configs) and the sizes
# override; on a CPU machine (a check of the script):
#   NO_DEVICE_ENV=1 MODEL=eval/model LOAD=auto SHORT=128 NEW=16 LONG=2048 ... .
set -uo pipefail
source benchmarks/serve_env.sh || exit 1
SHORT=${SHORT:-8192} NEW=${NEW:-2048} LONG=${LONG:-131072} LONG_NEW=${LONG_NEW:-16}
EVERY=${EVERY:-30} PROMPTS=${PROMPTS:-100} RATES=${RATES:-1.5} CHUNK=${CHUNK:-8192}
SLO_TPOT=${SLO_TPOT:-50} SLO_TTFT=${SLO_TTFT:-60000}

mix() {  # n seed: trtllm-bench JSONL, every EVERY-th request (the first included) a long one
  python3 - "$1" "$2" "$SHORT" "$NEW" "$LONG" "$LONG_NEW" "$EVERY" <<'PY'
import json, random, sys
n, seed, short, new, long, long_new, every = map(int, sys.argv[1:])
rng = random.Random(seed)
for i in range(n):
    length, out = (long, long_new) if i % every == 0 else (short, new)
    print(json.dumps({"input_ids": [rng.randrange(4, 250) for _ in range(length)], "output_tokens": out}))
PY
}
mix "$PROMPTS" 0 > /tmp/mix.jsonl
NEW=32 mix 4 1 > /tmp/warm.jsonl  # a long prompt and three short ones (their own tokens: no prefix-cache hits)

run() {  # name config chunked(0/1)
  local name=$1 config=$2 chunked=$3 flags
  if [ "$chunked" = 1 ]; then flags=(--enable_chunked_prefill --max_num_tokens "$CHUNK"); name+="-chunked"
  else flags=(--max_num_tokens $((LONG + 256))); name+="-one-step"; fi
  local start=$SECONDS
  start_server "$name" "$config" --max_seq_len $((LONG + LONG_NEW + 64)) "${flags[@]}" || return 1
  # Warm-up, not recorded: every path of the run (a long prompt beside short ones, in chunks or not).
  python3 -m rocket_trtllm.bench serve --base-url "http://127.0.0.1:$PORT/v1" --dataset /tmp/warm.jsonl \
    --request-rate inf > /dev/null 2>&1
  echo "== $name: up and warm after $((SECONDS - start)) s"
  python3 -m rocket_trtllm.bench serve --base-url "http://127.0.0.1:$PORT/v1" --label "$name" \
    --dataset /tmp/mix.jsonl --num-prompts "$PROMPTS" --request-rate $RATES --slo-tpot-ms "$SLO_TPOT" \
    --slo-ttft-ms "$SLO_TTFT" --json "$OUT/chunked-serve.json" 2>&1 | grep -v "highest rate"
  # Where the server's time went (warm-up included): steps and their wall time, prefill (with a prompt) and decode
  curl -s "http://127.0.0.1:$PORT/metrics" | grep "^rocket_step" | tee "$OUT/metrics-$name.txt"
  kill "$server_pid"; wait "$server_pid"
}

for method in ${METHODS:-rocket dense}; do
  if [ "$method" = rocket ]; then config=${ROCKET:-configs/rocket-long-context.yaml}; else config=${DENSE:-configs/dense.yaml}; fi
  run "$method" "$config" 0
  run "$method" "$config" 1
done
python3 - "$OUT/chunked-serve.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    print(f"{r['label']:>18} at {r['request_rate']:g}/s: goodput {r['goodput']:.3f} req/s of {r['request_throughput']:.3f}; "
          f"TPOT p99 {r['tpot_ms']['p99']:.1f} ms, ITL p99 {r['itl_ms']['p99']:.1f} ms, TTFT p99 {r['ttft_ms']['p99']:.0f} ms")
PY
