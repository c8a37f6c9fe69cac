"""Soak test of rocket-serve: thousands of mixed requests on loopback at a rate above capacity, then checks.

    python -m rocket_trtllm.serve.soak MODEL [--config Y] --requests 5000 --rate 200 --json soak.json

Starts the server in this process on a free loopback port (or loads one given by --base-url, which must be a
loopback address). The mix: streamed and whole completions, chats, clients that disconnect mid-stream or
give up waiting, malformed bodies, prompts past max_seq_len. Bounded by --requests and --time-limit.
Afterwards it requires: no 5xx; every other answer expected for its kind (200, 400, or 429 under
--max-queue); KV and KT blocks in use back to zero and nothing running or queued; the server still answers.
It reports the server's resident memory and GPU memory after a warm-up and at the end.
"""

import argparse
import asyncio
import contextlib
import ipaddress
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Optional
from urllib.parse import urlparse

import httpx
from tqdm.auto import tqdm

KINDS = {  # kind: weight in the mix
    "stream": 4,
    "complete": 3,
    "chat": 2,
    "disconnect": 2,
    "give_up": 1,
    "malformed": 1,
    "too_long": 1,
}
EXPECTED = {"malformed": {400}, "too_long": {400}}  # the rest: 200 (or 429 with a queue limit; -1: client left)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(f"/metrics has no {name}")


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"soak: {url} is not a loopback address; the soak test only loads a server on this machine")


async def one(client: httpx.AsyncClient, kind: str, rng: random.Random, model: str, max_seq_len: int) -> int:
    """Send one request of `kind`; its HTTP status, or -1 when the client left on purpose."""
    words = " ".join(
        rng.choice(["alpha", "beta", "gamma", "delta", "river", "stone"]) for _ in range(rng.randrange(4, 40))
    )
    body: dict[str, Any] = {"model": model, "prompt": words, "max_tokens": rng.randrange(1, 24), "temperature": 0.0}
    if kind == "malformed":
        content = rng.choice(['{"model": "x", "prompt": ', '{"model": 3}', '{"prompt": "a", "max_tokens": "many"}'])
        r = await client.post("/completions", content=content, headers={"content-type": "application/json"})
        return r.status_code
    if kind == "too_long":
        body["prompt"] = [5] * max_seq_len
        return (await client.post("/completions", json=body)).status_code
    if kind == "chat":
        chat = {"model": model, "messages": [{"role": "user", "content": words}], "max_tokens": body["max_tokens"]}
        return (await client.post("/chat/completions", json=chat)).status_code
    if kind == "complete":
        return (await client.post("/completions", json=body)).status_code
    if kind == "give_up":  # a client whose patience ends before the answer
        body["max_tokens"], body["ignore_eos"] = 64, True
        try:
            return (await client.post("/completions", json=body, timeout=rng.uniform(0.001, 0.05))).status_code
        except httpx.TimeoutException:
            return -1
    body["stream"] = True
    if kind == "disconnect":
        body["max_tokens"], body["ignore_eos"] = 200, True
    async with client.stream("POST", "/completions", json=body) as r:
        if r.status_code != 200 or kind == "disconnect":
            return r.status_code if r.status_code != 200 else -1  # leaves as soon as the stream starts
        async for _ in r.aiter_lines():
            pass
        return r.status_code


async def drive(base_url: str, model: str, kinds: list[str], rate: float, seed: int, max_seq_len: int,
                deadline: float, concurrency: int, api_key: Optional[str]) -> Counter:  # fmt: skip
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    outcomes: Counter = Counter()
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(kinds), desc="soak", leave=False)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120, limits=limits) as client:

        async def run(kind: str, sub: random.Random) -> None:
            async with gate:
                try:
                    status = await one(client, kind, sub, model, max_seq_len)
                except httpx.HTTPError as e:
                    status = f"client error {type(e).__name__}"
            outcomes[(kind, status)] += 1
            bar.update(1)

        tasks = []
        for kind in kinds:
            if time.monotonic() > deadline:
                break
            tasks.append(asyncio.create_task(run(kind, random.Random(rng.random()))))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    bar.close()
    return outcomes


def server_state(base_url: str, api_key: Optional[str]) -> dict[str, float]:
    text = httpx.get(base_url.rsplit("/v1", 1)[0] + "/metrics", timeout=30).text
    names = ("rocket_kv_blocks_used", "rocket_kt_blocks_used", "rocket_requests_running", "rocket_requests_waiting",
             "process_resident_memory_bytes", "rocket_gpu_memory_allocated_bytes")  # fmt: skip
    return {n: metric(text, n) for n in names}


def soak(base_url: str, requests: int, rate: float, seed: int = 0, time_limit: float = 600.0,
         concurrency: int = 64, api_key: Optional[str] = None, warmup: int = 32) -> dict[str, Any]:  # fmt: skip
    """Run the soak against `base_url` (an OpenAI API root on loopback) and return its report."""
    check_loopback(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    card = httpx.get(base_url + "/models", headers=headers, timeout=30).json()["data"][0]
    model, max_seq_len = card["id"], int(card["max_model_len"])
    rng = random.Random(seed)
    mix = [k for k, w in KINDS.items() for _ in range(w)]
    deadline = time.monotonic() + time_limit
    warm = asyncio.run(drive(base_url, model, ["complete"] * warmup, rate, seed, max_seq_len, deadline, concurrency,
                             api_key))  # fmt: skip
    before = settle(base_url, api_key)
    start = time.monotonic()
    kinds = [rng.choice(mix) for _ in range(requests)]
    outcomes = asyncio.run(drive(base_url, model, kinds, rate, seed + 1, max_seq_len, deadline, concurrency, api_key))
    seconds = time.monotonic() - start
    after = settle(base_url, api_key)
    final = httpx.post(base_url + "/completions", headers=headers, timeout=120,
                       json={"model": model, "prompt": "still there?", "max_tokens": 4})  # fmt: skip
    unexpected = {
        f"{kind} -> {status}": n for (kind, status), n in outcomes.items()
        if status not in EXPECTED.get(kind, {200, -1}) and status != 429
    }  # fmt: skip
    return {
        "requests_sent": sum(outcomes.values()),
        "seconds": seconds,
        "offered_rate": rate,
        "served_rate": sum(n for (_, s), n in outcomes.items() if s == 200) / seconds,
        "outcomes": {f"{k} -> {s}": n for (k, s), n in sorted(outcomes.items(), key=str)},
        "server_errors": sum(n for (_, s), n in outcomes.items() if isinstance(s, int) and s >= 500),
        "unexpected": unexpected,
        "warmup_ok": warm[("complete", 200)],
        "before": before,
        "after": after,
        "still_answers": final.status_code == 200,
    }


def settle(base_url: str, api_key: Optional[str], timeout: float = 120.0) -> dict[str, float]:
    """The server's counters once nothing runs or waits (aborts and disconnects land a moment late)."""
    end = time.monotonic() + timeout
    while True:
        state = server_state(base_url, api_key)
        idle = state["rocket_requests_running"] == 0 and state["rocket_requests_waiting"] == 0
        if (idle and state["rocket_kv_blocks_used"] == 0) or time.monotonic() > end:
            return state
        time.sleep(0.1)


def problems(report: dict[str, Any]) -> list[str]:
    """What the soak found wrong (empty when it passed)."""
    problems = []
    if report["server_errors"]:
        problems.append(f"{report['server_errors']} answers were 5xx")
    if report["unexpected"]:
        problems.append(f"unexpected answers: {report['unexpected']}")
    after = report["after"]
    for name in (
        "rocket_kv_blocks_used",
        "rocket_kt_blocks_used",
        "rocket_requests_running",
        "rocket_requests_waiting",
    ):
        if after[name]:
            problems.append(f"{name} is {after[name]:g} after the soak")
    if not report["still_answers"]:
        problems.append("the server no longer answers")
    return problems


HTTP_THREAD = "rocket-serve-http"  # the local server's thread (benchmarks/serve_costs.py times it)


@contextlib.contextmanager
def local_server(llm: Any, name: str, **options: Any) -> Iterator[str]:
    """rocket-serve's app for `llm` (create_app's `options`) on a free loopback port, in a thread of this
    process; yields the API root."""
    import uvicorn

    from .app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(llm, name, **options), host="127.0.0.1", port=port,
                            log_level="error")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=HTTP_THREAD)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rocket_trtllm.serve.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("model", nargs="?", help="checkpoint to serve here (or --base-url of a running server)")
    p.add_argument("--config", help="YAML of LLM options")
    p.add_argument("--base-url", help="a running server's API root on loopback (http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' (to a --base-url server that asks for one)")
    p.add_argument("--requests", type=int, default=5000, help="requests sent at most")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second offered (Poisson)")
    p.add_argument("--concurrency", type=int, default=64, help="most requests the client keeps open")
    p.add_argument("--max-queue", type=int, help="the local server answers 429 past this queue depth")
    p.add_argument("--max-seq-len", type=int, default=2048, help="the local server's max_seq_len")
    p.add_argument("--time-limit", type=float, default=600.0, help="stop sending after this many seconds")
    p.add_argument("--seed", type=int, default=0, help="the mix's seed")
    p.add_argument("--rounds", type=int, default=1,
                   help="soak one server this many times (seeds SEED, SEED+1...): does memory level off?")  # fmt: skip
    p.add_argument("--json", help="write the report (a list of them with --rounds > 1) here")
    return p


def main(argv: Optional[list[str]] = None) -> None:
    p = build_parser()
    ns = p.parse_args(argv)
    if not ns.model and not ns.base_url:
        p.error("give a MODEL to serve here or the --base-url of a running server")
    with contextlib.ExitStack() as stack:
        base = ns.base_url
        if base is None:
            from ..llmapi.llm import LLM

            llm = LLM.from_yaml(ns.config, model=ns.model, max_seq_len=ns.max_seq_len) if ns.config else LLM(
                model=ns.model, max_seq_len=ns.max_seq_len)  # fmt: skip
            stack.callback(llm.shutdown)
            base = stack.enter_context(local_server(llm, "model", max_queue=ns.max_queue))
        reports = []
        for i in range(ns.rounds):
            reports.append(soak(base.rstrip("/"), ns.requests, ns.rate, ns.seed + i, ns.time_limit, ns.concurrency,
                                ns.api_key))  # fmt: skip
            mib = [reports[-1][k]["process_resident_memory_bytes"] / 2**20 for k in ("before", "after")]
            print(f"round {i}: resident memory {mib[0]:.0f} -> {mib[1]:.0f} MiB", flush=True)
    print(json.dumps(reports[0] if ns.rounds == 1 else reports, indent=2))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(reports[0] if ns.rounds == 1 else reports, f, indent=2)
    found = [p for report in reports for p in problems(report)]
    if found:
        raise SystemExit("soak failed: " + "; ".join(found))
    print("soak passed")


if __name__ == "__main__":
    main()
