"""Bars of chunked_serve.sh's runs: throughput and goodput, then latency percentiles, one-step against chunked for
each method. Runs on the machine with matplotlib (not the device):
    python benchmarks/chunked_serve_plot.py RESULTS/chunked-serve.json ... --out chunked-serve.png
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RATES = [("request_throughput", "served (req/s)"), ("goodput", "goodput (req/s, TPOT <= SLO)")]
LATENCIES = [("ttft_ms", "p50", "TTFT p50"), ("tpot_ms", "p50", "TPOT p50"), ("tpot_ms", "p99", "TPOT p99"),
             ("itl_ms", "p50", "ITL p50"), ("itl_ms", "p99", "ITL p99")]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="chunked-serve.json files (their runs together)")
    p.add_argument("--out", required=True)
    ns = p.parse_args()
    runs = [r for path in ns.results for r in json.load(open(path))["runs"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        offset = (i - (len(runs) - 1) / 2) * width
        left.bar([x + offset for x in range(len(RATES))], [run[k] for k, _ in RATES], width, label=run["label"])
        right.bar([x + offset for x in range(len(LATENCIES))], [run[k][q] for k, q, _ in LATENCIES], width,
                  label=run["label"])  # fmt: skip
    left.set_xticks(range(len(RATES)), [name for _, name in RATES])
    right.set_xticks(range(len(LATENCIES)), [name for _, _, name in LATENCIES])
    right.set_yscale("log")
    right.set_ylabel("ms")
    rate = runs[0]["request_rate"]
    left.set_title(f"offered {rate:g} req/s")
    right.set_title("latency (log scale)")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ns.out, dpi=120)


if __name__ == "__main__":
    main()
