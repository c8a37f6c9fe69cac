"""rocket-quantize: write an FP8 checkpoint, in NVIDIA ModelOpt's Hugging Face layout, from a bf16/fp16/fp32 one.

    rocket-quantize MODEL OUT --fp8 [--kv-cache-fp8] [--calib-prompts N]

Every projection of the decoder layers (q/k/v/o, gate/up/down) becomes float8_e4m3fn weights with a per-tensor
`weight_scale` (amax / 448); `input_scale` is the amax of the projection's input over a few calibration prompts,
run through transformers (/ 448). With --kv-cache-fp8 the K and V projections also get `k_scale` / `v_scale`
(amax of their outputs / 448; K's times sqrt 2, the most RoPE's rotation can grow one channel). The embedding,
the norms and the LM head stay as they are. config.json gets ModelOpt's `quantization_config`, and
`hf_quant_config.json` is written beside it; tokenizer and generation files are copied.
"""

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .models.quant import FP8, FP8_MAX

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CALIBRATION = [
    "The history of the printing press begins in the fifteenth century, when movable type changed how books "
    "were made and how quickly ideas could travel between cities.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Question: A train leaves at 9:40 and arrives at 13:05. How long is the journey? Answer: 3 hours 25 minutes.",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
    "Les marchés financiers ont réagi vivement à l'annonce de la banque centrale ce matin.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen.",
    "User: Can you summarise this contract in three bullet points?\nAssistant: Certainly. First, the term is",
    "1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765",
]


def projection_of(name: str) -> Optional[str]:
    """'model.layers.3.self_attn.q_proj.weight' -> 'model.layers.3.self_attn.q_proj' (None for others)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-2] in PROJECTIONS and ".layers." in name:
        return name.removesuffix(".weight")
    return None


def calibrate(model_dir: Path, prompts: list[str], kv: bool) -> dict[str, float]:
    """amax of each projection's input (and of K/V projection outputs with `kv`), by forward hooks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    amax: dict[str, float] = {}

    def keep(key: str, t: torch.Tensor) -> None:
        amax[key] = max(amax.get(key, 0.0), t.detach().abs().max().item())

    hooks = []
    for name, module in model.named_modules():
        if name.split(".")[-1] in PROJECTIONS and ".layers." in f".{name}":

            def hook(m: Any, args: tuple, out: torch.Tensor, name: str = name) -> None:
                keep(f"{name}.input", args[0])
                if kv and name.endswith(("k_proj", "v_proj")):
                    keep(f"{name}.output", out)

            hooks.append(module.register_forward_hook(hook))
    with torch.inference_mode():
        for text in tqdm(prompts, desc="Calibrating"):
            model(**tok(text, return_tensors="pt").to(device))
    for h in hooks:
        h.remove()
    return amax


def quantize(model_dir: Path, out: Path, kv_cache_fp8: bool = False, calib_prompts: int = len(CALIBRATION)) -> Path:
    """Write the FP8 checkpoint of `model_dir` (a safetensors folder) to `out`; returns `out`."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not (model_dir / "config.json").is_file() or not files:
        raise SystemExit(f"rocket-quantize: {model_dir} is not a safetensors checkpoint folder")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("quantization_config") or (model_dir / "hf_quant_config.json").is_file():
        raise SystemExit(f"rocket-quantize: {model_dir} is already quantized")
    amax = calibrate(model_dir, CALIBRATION[: max(1, calib_prompts)], kv_cache_fp8)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in tqdm(list(f.keys()), desc=f"Quantizing {file.name}"):
                t = f.get_tensor(name)
                proj = projection_of(name)
                if proj is None:
                    tensors[name] = t
                    continue
                scale = t.float().abs().max().clamp_min(1e-12) / FP8_MAX
                tensors[name] = (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
                tensors[f"{proj}.weight_scale"] = scale.reshape(())
                tensors[f"{proj}.input_scale"] = torch.tensor(max(amax.get(f"{proj}.input", 0.0), 1e-12) / FP8_MAX)
                if kv_cache_fp8 and proj.endswith(("k_proj", "v_proj")):
                    grow = math.sqrt(2) if proj.endswith("k_proj") else 1.0
                    kv_name = "k_scale" if proj.endswith("k_proj") else "v_scale"
                    value = max(amax.get(f"{proj}.output", 0.0) * grow, 1e-12) / FP8_MAX
                    tensors[f"{proj}.{kv_name}"] = torch.tensor(value)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    spec = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8" if kv_cache_fp8 else None, "exclude_modules": ["lm_head"]}
    config["quantization_config"] = {"quant_method": "modelopt", **spec}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    producer = {"name": "rocket-quantize", "version": _version()}
    (out / "hf_quant_config.json").write_text(json.dumps({"producer": producer, "quantization": spec}, indent=2) + "\n")
    for extra in model_dir.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in (
            "config.json", "model.safetensors.index.json", "hf_quant_config.json"
        ):  # fmt: skip
            shutil.copy2(extra, out / extra.name)
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rocket-trtllm")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rocket-quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("model", type=Path, help="a bf16/fp16/fp32 safetensors checkpoint folder")
    p.add_argument("out", type=Path, help="where to write the FP8 checkpoint")
    p.add_argument("--fp8", action="store_true", required=True, help="FP8 weights (the only format written)")
    p.add_argument("--kv-cache-fp8", action="store_true", help="also write K/V scales for an FP8 KV cache")
    p.add_argument("--calib-prompts", type=int, default=len(CALIBRATION), help="calibration prompts (built in)")
    return p


def main(argv: Optional[list[str]] = None) -> None:
    ns = build_parser().parse_args(argv)
    print(quantize(ns.model, ns.out, ns.kv_cache_fp8, ns.calib_prompts))


if __name__ == "__main__":
    main()
