"""rocket-bench sweep's report: each method's ratios against dense, the table, the Pareto plot, and merging the
points of several runs."""

import json
from pathlib import Path
from typing import Any

MAX = "max"
DENSE = "dense"


# ---- the report --------------------------------------------------------------------------------------------------


def ratios(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Each method against dense: the best output tokens/s per GPU of each (max throughput), and tokens/s per user
    at each concurrency both ran (min latency: the lowest)."""
    dense = [p for p in points if p["method"] == DENSE]
    out: dict[str, Any] = {}
    if not dense:
        return out
    best_dense = max(p["output_tokens_per_s"] for p in dense)
    by_c = {p["concurrency_arg"]: p for p in dense if p["concurrency_arg"] != MAX}
    for method in dict.fromkeys(p["method"] for p in points if p["method"] != DENSE):
        mine = [p for p in points if p["method"] == method]
        per_user = {
            str(p["concurrency_arg"]): p["tokens_per_s_per_user"] / by_c[p["concurrency_arg"]]["tokens_per_s_per_user"]
            for p in mine
            if p["concurrency_arg"] in by_c
        }
        out[method] = {
            "max_throughput": max(p["output_tokens_per_s"] for p in mine) / best_dense,
            "tokens_per_s_per_user": per_user,
            "min_latency": per_user[min(per_user, key=int)] if per_user else None,
            "slower_per_user_at": [c for c, r in per_user.items() if r < 1.0],
        }
        if per_user:  # a prompt's prefill step against dense's, at the lowest concurrency both ran (stage 1's cost)
            low = min(per_user, key=int)
            mine_low = next(p for p in mine if str(p["concurrency_arg"]) == low)
            out[method]["prefill_s_per_request"] = {
                "concurrency": int(low),
                "ratio": (mine_low["prefill_s"] / mine_low["num_requests"])
                / (by_c[int(low)]["prefill_s"] / by_c[int(low)]["num_requests"]),
            }
    return out


COLUMNS = ("method", "concurrency_arg", "concurrency", "num_requests", "output_tokens_per_s", "tokens_per_s_per_user",
           "e2e_tokens_per_s_per_user", "prefill_s", "decode_s", "mean_decode_batch", "decode_step_ms",
           "decode_floor_ms", "prefill_tflops")  # fmt: skip


def row(p: dict[str, Any]) -> str:
    cells = [f"{p[c]:.3f}" if isinstance(p[c], float) else str(p[c]) for c in COLUMNS]
    return "| " + " | ".join(cells) + " |"


def table(points: list[dict[str, Any]]) -> str:
    return "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)] + [row(p) for p in points])


def plot(points: list[dict[str, Any]], path: str, title: str = "") -> None:
    """tokens/s per GPU against tokens/s per user (first to last token, and end to end), a line per method, each
    point marked with its concurrency: TensorRT-LLM's Pareto figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels = (("tokens_per_s_per_user", "tokens/s per user (first to last token)"),
              ("e2e_tokens_per_s_per_user", "tokens/s per user (end to end, TTFT included)"))  # fmt: skip
    for ax, (key, name) in zip(axes, panels):
        for method in dict.fromkeys(p["method"] for p in points):
            mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["concurrency"])
            xs, ys = [p[key] for p in mine], [p["output_tokens_per_s"] for p in mine]
            ax.plot(xs, ys, "-o", label=method)
            for p, x, y in zip(mine, xs, ys):
                text = f"{p['concurrency']} (max)" if p["concurrency_arg"] == MAX else str(p["concurrency"])
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel("output tokens/s per GPU")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def merge(paths: list[str]) -> dict[str, Any]:
    """The points of several sweeps of one workload; a later file's (method, concurrency) replaces an earlier one's."""
    report: dict[str, Any] = {}
    points: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        lengths = (data["input_len"], data["output_len"])
        if report and lengths != (report["input_len"], report["output_len"]):
            raise SystemExit(f"rocket-bench sweep: {path} is a {lengths[0]}/{lengths[1]} sweep, the others "
                             f"{report['input_len']}/{report['output_len']}")  # fmt: skip
        report.update({k: v for k, v in data.items() if k not in ("points", "ratios_vs_dense", "methods")})
        report.setdefault("methods", {}).update(data.get("methods", {}))
        for p in data["points"]:
            points[p["method"], str(p["concurrency_arg"])] = p
    report["points"] = list(points.values())
    return report
