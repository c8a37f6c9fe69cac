"""rocket-bench serve: latency and throughput of any OpenAI-compatible completions endpoint under load, with
the knobs of vLLM's and TensorRT-LLM's benchmark_serving.

    rocket-serve MODEL --config configs/rocket.yaml &
    rocket-bench serve --num-prompts 200 --input-len 8192 --output-len 256 --request-rate 1 2 4 inf \\
        --slo-tpot-ms 50 --json serve.json --plot serve.png

Requests arrive as a Poisson process at each --request-rate (inf: all at once), at most --max-concurrency in
flight; prompts are random token ids of --input-len (or a trtllm-bench JSONL --dataset), each asked for
exactly its output length (ignore_eos). Streaming gives time to first token (TTFT), inter-token latency
(ITL: the gaps between streamed chunks, one per token from rocket-serve) and time per output token (TPOT:
after the first, per request).

A soak at one operating point: `--max-concurrency C --duration 480 --disconnect-fraction 0.1 --check` keeps C
requests in flight for 8 minutes, a tenth of the clients leaving mid-stream, then requires no 5xx and, once the
server is idle, no KV block in use (its /metrics).
"""

import argparse
import asyncio
import itertools
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import httpx
from tqdm.auto import tqdm

PERCENTILES = (50, 90, 99)


@dataclass
class BenchRequest:
    prompt: Union[str, list[int]]
    output_len: int
    prompt_len: int = 0
    disconnect_after: int = 0  # a client that closes its stream after this many tokens (0: reads it all)


@dataclass
class RequestRecord:
    """One request's timeline, in seconds from its own start."""

    ok: bool
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""
    disconnected: bool = False  # the client left mid-stream on purpose (its tokens count, its latencies do not)

    @property
    def tpot(self) -> float:
        return (self.latency - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    rank = (len(xs) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def distribution(values: list[float]) -> dict[str, float]:
    """mean and p50/p90/p99, in milliseconds, of values in seconds."""
    ms = [v * 1e3 for v in values]
    out = {"mean": sum(ms) / len(ms) if ms else float("nan")}
    out.update({f"p{q}": percentile(ms, q) for q in PERCENTILES})
    return out


def summarize(
    records: list[RequestRecord],
    duration: float,
    slo_ttft_ms: Optional[float] = None,
    slo_tpot_ms: Optional[float] = None,
) -> dict[str, Any]:
    """The benchmark's figures from the requests' timelines and the run's wall time."""
    left = [r for r in records if r.ok and r.disconnected]
    done = [r for r in records if r.ok and not r.disconnected]
    good = [
        r for r in done
        if (slo_ttft_ms is None or r.ttft * 1e3 <= slo_ttft_ms) and (slo_tpot_ms is None or r.tpot * 1e3 <= slo_tpot_ms)
    ]  # fmt: skip
    output = sum(r.output_tokens for r in done + left)
    return {
        "completed": len(done),
        "disconnected": len(left),
        "failed": len(records) - len(done) - len(left),
        "server_errors": sum(r.error.startswith("HTTP 5") for r in records),
        "duration_s": duration,
        "request_throughput": len(done) / duration,
        "output_throughput": output / duration,
        "total_token_throughput": (output + sum(r.prompt_len for r in done + left)) / duration,
        "goodput": len(good) / duration,
        "ttft_ms": distribution([r.ttft for r in done]),
        "tpot_ms": distribution([r.tpot for r in done if r.output_tokens > 1]),
        "itl_ms": distribution([gap for r in done for gap in r.itl]),
        "e2el_ms": distribution([r.latency for r in done]),
        "errors": sorted({r.error for r in records if not r.ok})[:5],
    }


def synthetic_requests(n: int, input_len: int, output_len: int, seed: int, token_range: tuple[int, int]) -> list:
    """Prompts of random token ids (valid in any vocabulary holding `token_range`), fixed lengths."""
    rng = random.Random(seed)
    lo, hi = token_range
    return [BenchRequest([rng.randrange(lo, hi) for _ in range(input_len)], output_len, input_len) for _ in range(n)]


def dataset_requests(path: str, n: Optional[int] = None) -> list[BenchRequest]:
    """trtllm-bench's JSONL: one request a line with `prompt` (text) or `input_ids`, and `output_tokens`."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        prompt = row.get("input_ids", row.get("prompt"))
        if not isinstance(prompt, (str, list)) or not isinstance(row.get("output_tokens"), int):
            raise ValueError(f"{path}:{i}: needs 'prompt' (text) or 'input_ids' (token ids), and 'output_tokens' (int)")
        out.append(BenchRequest(prompt, row["output_tokens"], len(prompt) if isinstance(prompt, list) else 0))
    if not out:
        raise ValueError(f"{path} holds no requests")
    return out[:n] if n else out


async def send(client: httpx.AsyncClient, url: str, model: str, req: BenchRequest, stream: bool) -> RequestRecord:
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.output_len, "temperature": 0.0,
            "ignore_eos": True, "stream": stream}  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    record = RequestRecord(ok=False, prompt_len=req.prompt_len)
    try:
        if not stream:
            r = await client.post(url, json=body)
            record.latency = record.ttft = time.perf_counter() - start
            if r.status_code != 200:
                record.error = f"HTTP {r.status_code}"
                return record
            usage = r.json().get("usage") or {}
            record.output_tokens = usage.get("completion_tokens", req.output_len)
            record.prompt_len = usage.get("prompt_tokens", req.prompt_len)
            record.ok = True
            return record
        last = start
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                record.error = f"HTTP {r.status_code}"
                return record
            chunks = 0
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:  # the stream ended on an error event
                    record.error = str(data["error"].get("message", "error event"))
                    return record
                if data.get("usage"):
                    record.output_tokens = data["usage"].get("completion_tokens", 0)
                    record.prompt_len = data["usage"].get("prompt_tokens", req.prompt_len)
                if not any(c.get("text") or c.get("finish_reason") is None for c in data.get("choices", [])):
                    continue  # the closing chunk (finish_reason, usage) carries no token
                now = time.perf_counter()
                if chunks == 0:
                    record.ttft = now - start
                else:
                    record.itl.append(now - last)
                last, chunks = now, chunks + 1
                if chunks == req.disconnect_after:  # leaving closes the connection: the server must abort it
                    record.disconnected = True
                    break
        record.latency = time.perf_counter() - start
        record.output_tokens = chunks if record.disconnected else record.output_tokens or chunks
        record.ok = True
    except httpx.HTTPError as e:
        record.error = type(e).__name__
    return record


async def run_rate(
    base_url: str, model: str, requests: list[BenchRequest], rate: float, max_concurrency: Optional[int],
    stream: bool, seed: int, api_key: Optional[str] = None, duration: Optional[float] = None,
) -> tuple[list[RequestRecord], float]:  # fmt: skip
    """Send the requests, arrivals Poisson at `rate` per second (inf: as fast as `max_concurrency` lets them in); the
    records and wall time. With `duration`: requests go on (the list over again, each prompt rotated by its round so
    that no two share a prefix) until that many seconds have passed, and the run ends when the last one does."""
    rng = random.Random(seed)
    limit = asyncio.Semaphore(max_concurrency or len(requests))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/completions"
    pool = httpx.Limits(max_connections=max_concurrency or len(requests), max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), headers=headers, limits=pool) as client:
        bar = tqdm(total=None if duration else len(requests), desc=f"rate {rate:g}/s", leave=False)

        async def one(req: BenchRequest, held: bool) -> RequestRecord:
            if not held:
                await limit.acquire()
            try:
                record = await send(client, url, model, req, stream)
            finally:
                limit.release()
            bar.update(1)
            return record

        start = time.perf_counter()
        deadline = start + duration if duration else math.inf
        # A closed loop that runs for a duration takes its next request only when one is let in (else it would
        # queue requests without end).
        gated = duration is not None and not math.isfinite(rate)
        tasks = []
        for i in itertools.count() if duration else range(len(requests)):
            if gated:
                await limit.acquire()
            if time.perf_counter() >= deadline:
                if gated:
                    limit.release()
                break
            tasks.append(asyncio.create_task(one(request_at(requests, i), held=gated)))
            if math.isfinite(rate):
                await asyncio.sleep(rng.expovariate(rate))
        records = await asyncio.gather(*tasks)
        bar.close()
    return list(records), time.perf_counter() - start


def request_at(requests: list[BenchRequest], i: int) -> BenchRequest:
    """The i-th request sent: the list's, in rounds; past the first round a token-id prompt is rotated by its round."""
    req = requests[i % len(requests)]
    turn = i // len(requests)
    if not turn or not isinstance(req.prompt, list):
        return req
    shift = turn % len(req.prompt)
    return BenchRequest(req.prompt[shift:] + req.prompt[:shift], req.output_len, req.prompt_len, req.disconnect_after)


def mark_disconnects(requests: list[BenchRequest], fraction: float, seed: int) -> None:
    """That fraction of the requests (picked at random) close their stream after a random number of tokens."""
    rng = random.Random(seed + 1)
    for req in rng.sample(requests, round(fraction * len(requests))):
        req.disconnect_after = rng.randrange(1, max(2, req.output_len))


def served_model(base_url: str, api_key: Optional[str]) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=30).json()["data"][0]["id"]


def plot(runs: list[dict[str, Any]], path: str) -> None:
    """TTFT and TPOT (p50 and p99) against the request rate, a line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    finite = [r["request_rate"] for r in runs if math.isfinite(r["request_rate"])]
    at_inf = 2 * max(finite) if finite else 1.0  # "all at once" drawn past the highest finite rate
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = sorted((r for r in runs if r["label"] == label), key=lambda r: r["request_rate"])
        xs = [r["request_rate"] if math.isfinite(r["request_rate"]) else at_inf for r in mine]
        for ax, metric in zip(axes, ("ttft_ms", "tpot_ms")):
            for q, style in (("p50", "-o"), ("p99", "--s")):
                ax.plot(xs, [r[metric][q] for r in mine], style, label=f"{label} {q}")
    for ax, name in zip(axes, ("time to first token (ms)", "time per output token (ms)")):
        ax.set_xlabel("request rate (requests/s; a point past the others: all at once)")
        ax.set_ylabel(name)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's OpenAI API root")
    p.add_argument("--model", help="model id to send (default: the first of GET /v1/models)")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--label", help="this run's name in the JSON and the plot (default: the model id)")
    p.add_argument("--num-prompts", type=int, default=100, help="requests sent at each rate")
    p.add_argument("--request-rate", type=float, nargs="+", default=[math.inf],
                   help="requests per second, Poisson arrivals; inf = all at once; several: one run each")  # fmt: skip
    p.add_argument("--max-concurrency", type=int, help="most requests in flight (default: no limit)")
    p.add_argument("--input-len", type=int, default=1024, help="prompt tokens (random ids)")
    p.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    p.add_argument("--token-range", type=int, nargs=2, default=[4, 250], metavar=("LO", "HI"),
                   help="random prompt ids come from [LO, HI) (the default suits byte-level vocabularies)")  # fmt: skip
    p.add_argument("--dataset", help="trtllm-bench JSONL (prompt or input_ids, output_tokens) instead of random")
    p.add_argument("--no-stream", dest="stream", action="store_false", help="non-streaming requests (no TTFT/ITL)")
    p.add_argument("--slo-ttft-ms", type=float, help="goodput counts requests within this TTFT ...")
    p.add_argument("--slo-tpot-ms", type=float, help="... and this TPOT")
    p.add_argument("--duration", type=float,
                   help="seconds to keep sending (the prompts over again, rotated) before the run drains")  # fmt: skip
    p.add_argument("--disconnect-fraction", type=float, default=0.0,
                   help="this fraction of the clients close their stream after a random number of tokens")  # fmt: skip
    p.add_argument("--check", action="store_true",
                   help="exit 1 if an answer was a 5xx or, once the server is idle, a KV block is in use")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="the prompts', the arrivals' and the leaving clients' seed")
    p.add_argument("--json", help="write the runs to this JSON file (appends to its runs if it exists)")
    p.add_argument("--plot", help="write latency vs request rate for every run in --json (needs matplotlib)")


def main(ns: argparse.Namespace) -> None:
    if ns.num_prompts < 1 or ns.input_len < 1 or ns.output_len < 1 or min(ns.request_rate) <= 0:
        raise SystemExit("rocket-bench serve: --num-prompts, --input-len, --output-len and --request-rate must be > 0")
    if not 0.0 <= ns.disconnect_fraction < 1.0 or (ns.duration is not None and ns.duration <= 0):
        raise SystemExit("rocket-bench serve: --disconnect-fraction must be in [0, 1) and --duration > 0")
    if ns.disconnect_fraction and not ns.stream:
        raise SystemExit("rocket-bench serve: --disconnect-fraction needs streaming (clients leave mid-stream)")
    try:
        requests = (
            dataset_requests(ns.dataset, ns.num_prompts)
            if ns.dataset
            else synthetic_requests(ns.num_prompts, ns.input_len, ns.output_len, ns.seed, tuple(ns.token_range))
        )
        model = ns.model or served_model(ns.base_url, ns.api_key)
    except (ValueError, httpx.HTTPError, KeyError, IndexError) as e:
        raise SystemExit(f"rocket-bench serve: {e}") from None
    mark_disconnects(requests, ns.disconnect_fraction, ns.seed)
    runs, faults = [], []
    for rate in ns.request_rate:
        records, duration = asyncio.run(
            run_rate(
                ns.base_url, model, requests, rate, ns.max_concurrency, ns.stream, ns.seed, ns.api_key, ns.duration
            )  # fmt: skip
        )
        run = {"label": ns.label or model, "request_rate": rate, "max_concurrency": ns.max_concurrency,
               **summarize(records, duration, ns.slo_ttft_ms, ns.slo_tpot_ms)}  # fmt: skip
        if ns.check:
            from .soak import settle  # the soak's wait for an idle server (aborts land a step late)

            run["server_after"] = after = settle(ns.base_url, ns.api_key)
            if run["server_errors"] or after.get("rocket_kv_blocks_used", 1) or after.get("rocket_requests_running"):
                faults.append(f"rate {rate:g}/s: {run['server_errors']} answers were 5xx; after the run {after}")
        runs.append(run)
        t, p = run["ttft_ms"], run["tpot_ms"]
        print(f"rate {rate:g}/s: {run['completed']} ok, {run['disconnected']} left mid-stream, {run['failed']} failed, "
              f"{run['request_throughput']:.2f} req/s, {run['output_throughput']:.1f} out tok/s, goodput "
              f"{run['goodput']:.2f} req/s; TTFT p50/p99 {t['p50']:.1f}/{t['p99']:.1f} ms, TPOT p50/p99 "
              f"{p['p50']:.2f}/{p['p99']:.2f} ms")  # fmt: skip
    if ns.json:
        path = Path(ns.json)
        earlier = json.loads(path.read_text())["runs"] if path.is_file() else []
        slo = {"slo_ttft_ms": ns.slo_ttft_ms, "slo_tpot_ms": ns.slo_tpot_ms}
        path.write_text(json.dumps({"runs": earlier + runs, **slo}, indent=2))
        runs = earlier + runs
    if ns.slo_tpot_ms is not None:
        within = f"TPOT p99 <= {ns.slo_tpot_ms:g} ms" + (
            f" and TTFT p99 <= {ns.slo_ttft_ms:g} ms" if ns.slo_ttft_ms is not None else ""
        )
        for label, rate in sustained(runs, ns.slo_tpot_ms, ns.slo_ttft_ms).items():
            print(f"{label}: highest rate with {within}: {rate if rate else 'none'}")
    if ns.plot:
        plot(runs, ns.plot)
    if faults:
        raise SystemExit("rocket-bench serve --check failed: " + "; ".join(faults))


def sustained(
    runs: list[dict[str, Any]], slo_tpot_ms: float, slo_ttft_ms: Optional[float] = None
) -> dict[str, Optional[float]]:
    """Per label, the highest finite request rate whose TPOT p99 (and TTFT p99, when given) stay within the SLOs
    (None: no rate did). A server past its capacity keeps TPOT low and queues: the TTFT SLO is what catches that.
    A closed loop (all at once under --max-concurrency) counts at the rate it achieved, its steady state, by TPOT
    alone: it cannot queue past its concurrency, and its TTFT tail is the first wave arriving at once."""
    out: dict[str, Optional[float]] = {}
    for r in runs:
        closed = not math.isfinite(r["request_rate"]) and r.get("max_concurrency")
        rate = r["request_throughput"] if closed else r["request_rate"]
        ok = (
            math.isfinite(rate)
            and r["completed"]
            and not r.get("failed")
            and r["tpot_ms"]["p99"] <= slo_tpot_ms
            and (slo_ttft_ms is None or closed or r["ttft_ms"]["p99"] <= slo_ttft_ms)
        )
        best = out.get(r["label"])
        out[r["label"]] = max(best or 0.0, rate) if ok else best
    return out
