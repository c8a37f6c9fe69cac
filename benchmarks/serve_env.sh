# Sourced by the serving benchmarks (serve_gpu.sh, chunked_serve.sh) from the repo root: $OUT, the device's wheels
# (unless NO_DEVICE_ENV is set), MODEL (default: the Llama-3.1-8B architecture's folder, random weights), PORT, and
# start_server NAME CONFIG ARGS...: rocket-serve on MODEL in the background (its log $OUT/server-NAME.log, its pid in
# $server_pid), returning once it answers /health.
OUT=${OUT:-out}; mkdir -p "$OUT"
[ -n "${NO_DEVICE_ENV:-}" ] || source benchmarks/device_env.sh || return 1
MODEL=${MODEL:-$(python3 -c "import pathlib, tempfile
from rocket_trtllm.bench import write_arch
print(write_arch('llama-3.1-8b', pathlib.Path(tempfile.mkdtemp())))")}
PORT=${PORT:-8123}

start_server() {  # name config args...
  local name=$1 config=$2; shift 2
  python3 -m rocket_trtllm.serve.cli "$MODEL" --config "$config" --load_format "${LOAD:-dummy}" --port "$PORT" \
    --log_level warning "$@" > "$OUT/server-$name.log" 2>&1 &
  server_pid=$!
  until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 "$server_pid" 2>/dev/null || { echo "rocket-serve $name failed: see $OUT/server-$name.log"; return 1; }
    sleep 1
  done
}
