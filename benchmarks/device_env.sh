# Sourced at the start of every device command (repo root, .whl carried): the wheels the device image
# lacks (installed only where they are missing), and the layout of the installed package (eval/
# inside rocket_trtllm/) as links.
if ! python3 -c "import pydantic, fastapi, gguf" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || return 1
fi
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
ln -sfn "$PWD/eval" rocket_trtllm/eval
