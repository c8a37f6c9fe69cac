#!/usr/bin/env bash
# A/B on one GPU machine, in one device call from the repo root (.whl and dev carried): RocketKV's and dense's batch-1
# decode step with this tree, with variants of it (module constants patched), and with an older commit's package:
#   git archive <sha> rocket_trtllm kernels eval configs | tar -x -C dev/old      # here, before the call
#   VARIANTS="nocombine=rocket_trtllm.kernels.paged_decode:SPLIT_MIN_TOKENS=1048576" bash benchmarks/experiments/ab.sh
# LEN (32768: RocketKV's step is the 128k one, both keep 2048 tokens, and the prefill takes 1.4 s), METHODS
# ("rocket-long-context dense"; a name with a dev/<name>.yaml runs that YAML), ROUNDS (2, interleaved), EXTRA
# (more rocket-bench arguments, e.g. --fp8). One line per run; everything lands in $OUT/ab.tgz.
set -uo pipefail
DEST=${OUT:-out}; R=/tmp/ab; mkdir -p "$R" "$DEST"
trap 'tar czf "$DEST/ab.tgz" -C /tmp ab' EXIT
source benchmarks/device_env.sh || exit 1
ROOT=$PWD
if [ -d dev/old/rocket_trtllm ]; then
  ln -sfn "$ROOT/dev/old/kernels" dev/old/rocket_trtllm/kernels; ln -sfn "$ROOT/dev/old/eval" dev/old/rocket_trtllm/eval
fi
config() {  # a method's YAML: dev/<name>.yaml (written for the call) or configs/<name>.yaml
  if [ -f "$ROOT/dev/$1.yaml" ]; then echo "$ROOT/dev/$1.yaml"; else echo "$ROOT/configs/$1.yaml"; fi
}
run() {  # tag package-root patches method
  (cd /tmp && PYTHONPATH=$2:/tmp/site timeout 150 python3 "$ROOT/benchmarks/experiments/bench_patched.py" "$3" \
    --arch llama-3.1-8b --random-weights --batch-size 1 --input-len "${LEN:-32768}" --output-len 128 \
    --config "$(config "$4")" ${EXTRA:-} --json "$R/$1-$4.json" 2>&1 | grep -v Loading | tail -1 | sed "s/^/$1 /" \
    | tee "$R/$1-$4.txt")
}
for i in $(seq "${ROUNDS:-2}"); do
  for m in ${METHODS:-rocket-long-context dense}; do
    run "new$i" "$ROOT" "" "$m"
    [ -d dev/old/rocket_trtllm ] && run "old$i" "$ROOT/dev/old" "" "$m"
    for v in ${VARIANTS:-}; do run "${v%%=*}$i" "$ROOT" "${v#*=}" "$m"; done
  done
done
