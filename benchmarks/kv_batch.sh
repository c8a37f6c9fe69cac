#!/usr/bin/env bash
# FP8 KV against bf16 KV where the KV cache is what limits a run: RocketKV and dense at the largest batch each pool
# holds, in one device call from the repo root with .whl carried: bash benchmarks/kv_batch.sh
# 8192-token prompts, 512 new tokens: RocketKV keeps 2048 tokens of any longer prompt, so its pool holds as many
# requests as at 32k, in a quarter of the prefill time. RocketKV with fp8 KV asks for 256 (the preset's CUDA-graph
# limit; its pool holds more). One line per run; everything lands in $OUT/kv/.
set -uo pipefail
R=${OUT:-out}/kv; mkdir -p "$R"
source benchmarks/device_env.sh || exit 1
for kv in auto fp8; do
  for name in rocket-long-context dense; do
    sed "s/^kv_cache_config:/kv_cache_config:\n  dtype: $kv/" configs/$name.yaml > /tmp/$name-$kv.yaml
  done
done
B="python3 -m rocket_trtllm.bench --arch llama-3.1-8b --random-weights --input-len 8192 --output-len 512"
run() {  # time-limit tag rocket-bench-args...
  timeout "$1" $B "${@:3}" --json "$R/$2.json" 2>&1 | grep -v Loading | tail -1 | sed "s/^/$2 /" | tee "$R/$2.txt"
}
run 150 rocket-bf16kv --config /tmp/rocket-long-context-auto.yaml --max-batch
run 200 rocket-fp8kv --config /tmp/rocket-long-context-fp8.yaml --batch-size 256
run 100 dense-bf16kv --config /tmp/dense-auto.yaml --max-batch
run 120 dense-fp8kv --config /tmp/dense-fp8.yaml --max-batch
