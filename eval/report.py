"""Tables and plots of rocket-eval results, also from a saved --json file:

python -m rocket_trtllm.eval.report sweep.json --markdown sweep.md --plot sweep.png
python -m rocket_trtllm.eval.report seed0.json seed1.json --json both.json   # cells averaged over the files
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

LONGBENCH = "longbench_v2"


def headline(row: dict[str, Any]) -> bool:
    """Rows that count in the mean: every synthetic task and length, and LongBench v2 overall."""
    return row["task"] != LONGBENCH or row["length"] == "overall"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The accuracy table (a row per method and budget, a column per task and length), then the
    perplexity table with each cell's ratio to full KV's."""
    scored = [r for r in rows if "perplexity" in r]
    rows = [r for r in rows if "accuracy" in r]
    tables = [accuracy_table(rows)] if rows else []
    if scored:
        tables.append(perplexity_table(scored))
    return "\n\n".join(tables)


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys((r["task"], r["length"]) for r in rows))
    lines = ["| algorithm | budget | " + " | ".join(f"{t} {n}" for t, n in cols) + " | mean | read/step |",
             "|---|---|" + "---|" * (len(cols) + 2)]  # fmt: skip
    for key in dict.fromkeys((r["algorithm"], r["budget"]) for r in rows):
        mine = [r for r in rows if (r["algorithm"], r["budget"]) == key]
        acc = {(r["task"], r["length"]): r["accuracy"] for r in mine}
        cells = [f"{acc[c]:.1f}" if c in acc else "-" for c in cols]
        counted = [r["accuracy"] for r in mine if headline(r)]
        lines.append(f"| {key[0]} | {key[1] or 'all'} | " + " | ".join(cells) + f" | {mean(counted):.1f} | "
                     f"{read_per_step(mine)} |")  # fmt: skip
    return "\n".join(lines)


def read_per_step(rows: list[dict[str, Any]]) -> str:
    """What the method read for attention per decode step, in tokens of K/V (mean over its cells)."""
    paid = [r["tokens_equivalent_per_step"] for r in rows if r.get("tokens_equivalent_per_step")]
    return f"{mean(paid):.0f}" if paid else "-"


def merge(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several runs' rows (seeds, or methods run apart) as one: a cell found in several runs gets the mean of
    their accuracies, perplexities and bytes, and the sum of their samples."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in (r for rows in runs for r in rows):
        cells.setdefault((row["algorithm"], row["budget"], row["task"], row["length"]), []).append(row)
    out = []
    for same in cells.values():
        row = dict(same[0], samples=sum(r["samples"] for r in same))
        for k in ("accuracy", "perplexity", "bytes_per_step", "tokens_equivalent_per_step", "cached_prompt_fraction"):
            if k in row:
                row[k] = mean([r[k] for r in same])
        out.append(row)
    return out


def perplexity_table(rows: list[dict[str, Any]]) -> str:
    """Perplexity per method, budget and document length, with the ratio to full KV's in parentheses."""
    lengths = list(dict.fromkeys(r["length"] for r in rows))
    full = {r["length"]: r["perplexity"] for r in rows if r["algorithm"] == "full"}
    lines = ["| algorithm | budget | " + " | ".join(f"doc_ppl {n}" for n in lengths) + " | mean ratio to full |",
             "|---|---|" + "---|" * (len(lengths) + 1)]  # fmt: skip
    for key in dict.fromkeys((r["algorithm"], r["budget"]) for r in rows):
        ppl = {r["length"]: r["perplexity"] for r in rows if (r["algorithm"], r["budget"]) == key}
        ratios = {n: ppl[n] / full[n] for n in ppl if n in full}
        cells = [f"{ppl[n]:.3f}" + (f" ({ratios[n]:.3f})" if n in ratios else "") if n in ppl else "-"
                 for n in lengths]  # fmt: skip
        lines.append(
            f"| {key[0]} | {key[1] or 'all'} | " + " | ".join(cells) + f" | {mean(list(ratios.values())):.3f} |"
        )
    return "\n".join(lines)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def plot(rows: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("rocket-eval: --plot needs matplotlib (pip install 'rocket-trtllm[eval]'); skipped", file=sys.stderr)
        return
    panels = [(m, [r for r in rows if m in r]) for m in ("accuracy", "perplexity")]
    panels = [(m, mine) for m, mine in panels if mine]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (metric, mine) in zip(axes[0], panels):
        _panel(ax, metric, mine)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _panel(ax: Any, metric: str, rows: list[dict[str, Any]]) -> None:
    """Accuracy (mean over tasks and lengths), or perplexity as a ratio to full KV's, against the budget."""
    budgets = sorted({r["budget"] for r in rows if r["budget"]})
    full = {r["length"]: r[metric] for r in rows if r["algorithm"] == "full"}

    def value(r: dict[str, Any]) -> float:
        return r[metric] / full[r["length"]] if metric == "perplexity" else r[metric]

    for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
        mine = [r for r in rows if r["algorithm"] == algorithm and headline(r)]
        if metric == "perplexity":
            mine = [r for r in mine if r["length"] in full]
        by_budget = {b: mean([value(r) for r in mine if r["budget"] == b]) for b in {r["budget"] for r in mine}}
        if algorithm == "full":
            ax.axhline(by_budget[None], color="black", linestyle="--", label="full KV")
            continue
        xs = [b for b in budgets if b in by_budget]
        ax.plot(xs, [by_budget[b] for b in xs], marker="o", label=algorithm)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token budget per decode step")
    ax.set_ylabel("accuracy (%), mean over tasks and lengths" if metric == "accuracy" else "perplexity / full KV's")
    ax.legend()


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rocket_trtllm.eval.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("results", nargs="+", help="JSON files written by rocket-eval --json (several: merged)")
    p.add_argument("--markdown", help="write the table to this file (it is printed either way)")
    p.add_argument("--plot", help="write accuracy vs budget per algorithm to this image (needs matplotlib)")
    p.add_argument("--json", help="write the merged rows to this file")
    ns = p.parse_args(argv)
    loaded = [json.loads(Path(f).read_text()) for f in ns.results]
    rows = merge([d["results"] for d in loaded])
    if ns.json:
        Path(ns.json).write_text(json.dumps({"args": loaded[0]["args"], "results": rows}, indent=2))
    write(rows, ns.markdown, ns.plot)


def write(rows: list[dict[str, Any]], markdown_path: Optional[str], plot_path: Optional[str]) -> None:
    """Print the table; write it and the plot where asked."""
    table = markdown(rows)
    print(table)
    if markdown_path:
        Path(markdown_path).write_text(table + "\n")
    if plot_path:
        plot(rows, plot_path)


if __name__ == "__main__":
    main()
