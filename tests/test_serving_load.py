"""The serving benchmark, the soak test and the queue limit against a real rocket-serve on loopback."""

import json
import math
import threading

import httpx
import pytest
from rocket_trtllm.eval import SHIPPED_MODEL

from rocket_trtllm import LLM
from rocket_trtllm.bench import main as bench_main
from rocket_trtllm.serve.benchmark import RequestRecord, percentile, summarize, sustained
from rocket_trtllm.serve.soak import local_server, problems, soak


@pytest.fixture(scope="module")
def shipped():
    with LLM(str(SHIPPED_MODEL), max_seq_len=512) as llm:
        yield llm


def test_percentiles_interpolate_between_ranks():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert percentile([7.0], 99) == 7.0 and math.isnan(percentile([], 50))


def test_summary_of_a_trace_with_known_timings():
    # Request i: first token at 0.1 * (i + 1) s, then 9 more tokens 20 ms apart (+ i ms); 10 requests in 4 s.
    records = [
        RequestRecord(ok=True, prompt_len=100, output_tokens=10, ttft=0.1 * (i + 1),
                      latency=0.1 * (i + 1) + 9 * (0.020 + 0.001 * i), itl=[0.020 + 0.001 * i] * 9)
        for i in range(10)
    ] + [RequestRecord(ok=False, error="HTTP 500")]  # fmt: skip
    s = summarize(records, duration=4.0, slo_ttft_ms=500, slo_tpot_ms=25)
    assert (s["completed"], s["failed"], s["errors"]) == (10, 1, ["HTTP 500"])
    assert s["request_throughput"] == 2.5 and s["output_throughput"] == 25.0 and s["total_token_throughput"] == 275.0
    assert s["ttft_ms"]["mean"] == pytest.approx(550.0) and s["ttft_ms"]["p50"] == pytest.approx(550.0)
    assert s["ttft_ms"]["p90"] == pytest.approx(910.0) and s["ttft_ms"]["p99"] == pytest.approx(991.0)
    assert s["tpot_ms"]["p50"] == pytest.approx(24.5) and s["itl_ms"]["p99"] == pytest.approx(29.0)
    assert s["goodput"] == 5 / 4.0  # requests 0-4: TTFT <= 500 ms (request 4: exactly) and TPOT 20-24 ms


def test_sustained_rate_is_the_highest_within_the_slo():
    def run(label, rate, p99, ttft_p99=100.0, failed=0):
        return {"label": label, "request_rate": rate, "completed": 5, "failed": failed, "tpot_ms": {"p99": p99},
                "ttft_ms": {"p99": ttft_p99}}  # fmt: skip

    runs = [run("a", 1, 10), run("a", 2, 40), run("a", 4, 90), run("a", math.inf, 20), run("b", 1, 60)]
    assert sustained(runs, 50) == {"a": 2, "b": None}
    queued = [run("c", 1, 10), run("c", 2, 12, ttft_p99=30_000), run("c", 3, 11, failed=1)]
    assert sustained(queued, 50) == {"c": 2}  # the failed run does not count; TPOT alone misses the queue
    assert sustained(queued + [run("c", 0.5, 9)], 50, slo_ttft_ms=5000) == {"c": 1}
    assert sustained([run("d", 2, 12, ttft_p99=30_000)], 50, slo_ttft_ms=5000) == {"d": None}
    closed = {**run("e", math.inf, 30), "max_concurrency": 8, "request_throughput": 1.25}  # a steady state
    assert sustained([run("e", 1, 10), closed], 50) == {"e": 1.25}
    assert sustained([run("e", 2, 10), closed], 50) == {"e": 2}
    burst = {**closed, "ttft_ms": {"p99": 26_000.0}}  # its first wave arrived at once: not a queue
    assert sustained([burst], 50, slo_ttft_ms=5000) == {"e": 1.25}
    assert sustained([{**burst, "tpot_ms": {"p99": 60.0}}], 50, slo_ttft_ms=5000) == {"e": None}


def test_serving_benchmark_against_rocket_serve(shipped, tmp_path):
    out, png = tmp_path / "serve.json", tmp_path / "serve.png"
    with local_server(shipped, "model") as base:
        bench_main(["serve", "--base-url", base, "--num-prompts", "6", "--input-len", "48", "--output-len", "6",
                    "--request-rate", "50", "inf", "--max-concurrency", "4", "--slo-tpot-ms", "100000",
                    "--json", str(out)])  # fmt: skip
    runs = json.loads(out.read_text())["runs"]
    assert [r["request_rate"] for r in runs] == [50, math.inf]
    for r in runs:
        assert (r["completed"], r["failed"], r["label"]) == (6, 0, "model")
        assert r["output_throughput"] == pytest.approx(6 * 6 / r["duration_s"])  # exactly 6 tokens each (ignore_eos)
        assert 0 < r["ttft_ms"]["p50"] <= r["e2el_ms"]["p50"] and r["goodput"] == r["request_throughput"]
    pytest.importorskip("matplotlib")
    bench_main(
        [
            "serve",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--num-prompts",
            "1",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )  # fmt: skip  (nothing listens on port 9: a failed run)
    assert png.stat().st_size > 1000 and json.loads(out.read_text())["runs"][-1]["failed"] == 1


def test_clients_leaving_mid_stream_at_an_operating_point(shipped, tmp_path):
    out = tmp_path / "point.json"
    with local_server(shipped, "model") as base:
        bench_main(["serve", "--base-url", base, "--num-prompts", "8", "--input-len", "48", "--output-len", "12",
                    "--max-concurrency", "3", "--disconnect-fraction", "0.25", "--check",
                    "--json", str(out)])  # fmt: skip
        run = json.loads(out.read_text())["runs"][0]
        assert (run["completed"], run["disconnected"], run["failed"], run["server_errors"]) == (6, 2, 0, 0)
        assert run["server_after"]["rocket_kv_blocks_used"] == 0
        assert run["output_throughput"] * run["duration_s"] < 8 * 12  # the two who left took fewer tokens
        # --duration: the prompts again (rotated) until the time is up, then the run drains
        bench_main(["serve", "--base-url", base, "--num-prompts", "2", "--input-len", "48", "--output-len", "4",
                    "--max-concurrency", "2", "--duration", "1", "--check", "--json", str(out)])  # fmt: skip
    run = json.loads(out.read_text())["runs"][-1]
    assert run["completed"] >= 1 and run["failed"] == run["disconnected"] == 0
    assert run["output_throughput"] == pytest.approx(run["completed"] * 4 / run["duration_s"])


def test_requests_past_the_first_round_share_no_prefix():
    from rocket_trtllm.serve.benchmark import BenchRequest, request_at

    reqs = [BenchRequest([1, 2, 3, 4], 5, 4), BenchRequest([5, 6, 7, 8], 5, 4, disconnect_after=2)]
    assert request_at(reqs, 1) is reqs[1]
    again = request_at(reqs, 3)
    assert again.prompt == [6, 7, 8, 5] and again.disconnect_after == 2
    assert {tuple(request_at(reqs, i).prompt[:1]) for i in range(0, 8, 2)} == {(1,), (2,), (3,), (4,)}


def test_soak_at_ci_size(shipped):
    with local_server(shipped, "model") as base:
        report = soak(base, requests=300, rate=150, seed=0, time_limit=120)
    assert problems(report) == [], report
    assert report["requests_sent"] == 300 and report["server_errors"] == 0
    kinds = {k.split(" ")[0] for k in report["outcomes"]}
    assert kinds == {"stream", "complete", "chat", "disconnect", "give_up", "malformed", "too_long"}
    assert report["outcomes"]["too_long -> 400"] > 0 and report["after"]["rocket_kv_blocks_used"] == 0


def test_max_queue_answers_429_and_the_server_recovers(shipped):
    engine, step = shipped.engine, shipped.engine.step
    reached, gate = threading.Event(), threading.Event()

    def held_step():  # nothing is admitted until the gate opens: the first request waits in the queue
        if not gate.is_set():
            reached.set()
            gate.wait()
        return step()

    body = {"model": "model", "prompt": "hello", "max_tokens": 3}
    engine.step = held_step
    try:
        with local_server(shipped, "model", max_queue=1) as base:
            first: dict = {}
            waiter = threading.Thread(target=lambda: first.update(r=httpx.post(base + "/completions", json=body,
                                                                                 timeout=120)))  # fmt: skip
            waiter.start()
            assert reached.wait(60)
            refused = httpx.post(base + "/completions", json=body, timeout=60)
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded" and "queue is full" in error[
                "message"]  # fmt: skip
            gate.set()
            waiter.join()
            assert first["r"].status_code == 200
            assert httpx.post(base + "/completions", json=body, timeout=60).status_code == 200
            assert (
                'rocket_requests_total{outcome="rejected"} 1' in httpx.get(base.removesuffix("/v1") + "/metrics").text
            )
    finally:
        gate.set()
        del engine.step


def test_trtllm_bench_throughput_shape(tmp_path):
    data = tmp_path / "requests.jsonl"
    rows = [{"task_id": 0, "prompt": "Read the text and answer.", "output_tokens": 5},
            {"task_id": 1, "input_ids": [5, 6, 7, 8, 9, 10], "output_tokens": 7}]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = tmp_path / "extra.yaml"
    config.write_text("sparse_attention_config:\n  algorithm: rocket\n  prompt_budget: 64\n  topr: 1.0\n")
    report = tmp_path / "report.json"
    bench_main(["--model", str(SHIPPED_MODEL), "throughput", "--dataset", str(data), "--config", str(config),
                "--report_json", str(report), "--tp", "2"])  # fmt: skip
    out = json.loads(report.read_text())
    assert out["num_requests"] == 2 and out["total_output_tokens"] == 12 and out["total_input_tokens"] > 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 0, "output_tokens": 3}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:1: needs 'prompt'"):
        bench_main(["--model", str(SHIPPED_MODEL), "throughput", "--dataset", str(bad)])


def test_rocket_bench_profiles_prefill_and_decode_steps(tmp_path):
    config = tmp_path / "rocket.yaml"
    config.write_text("sparse_attention_config:\n  algorithm: rocket\n  prompt_budget: 64\n  topr: 1.0\n")
    profile = tmp_path / "profile.txt"
    bench_main([str(SHIPPED_MODEL), "--config", str(config), "--input-len", "300", "--output-len", "8",
                "--batch-size", "2", "--profile", str(profile), "--profile-batch", "2",
                "--json", str(tmp_path / "run.json")])  # fmt: skip
    run = json.loads((tmp_path / "run.json").read_text())["runs"][0]
    assert run["decode_batch"] == 2 and run["decode_graphs"] is False  # the CPU has no CUDA graphs
    text = profile.read_text()
    assert text.startswith("32 decode steps, batch 2, 300-token prompts") and "By host time:" in text
    decode, prefill = text.split("The first prefill step: ")
    assert "aten::" in decode and "aten::" in prefill
    with pytest.raises(SystemExit):  # more than the run's batch: the scheduler would decode fewer together
        bench_main([str(SHIPPED_MODEL), "--profile", str(profile), "--profile-batch", "4", "--batch-size", "2"])


def test_rocket_bench_profile_decodes_its_whole_batch(tmp_path):
    """48 profiled requests: each prefill step also decodes the requests before it, so the first ones outlived 48
    prefills only with room for it (they finished early and the profile decoded 8 together, reporting 48)."""
    profile = tmp_path / "profile.txt"
    bench_main([str(SHIPPED_MODEL), "--input-len", "24", "--output-len", "4", "--batch-size", "48",
                "--profile", str(profile), "--profile-batch", "48"])  # fmt: skip
    assert profile.read_text().startswith("32 decode steps, batch 48, 24-token prompts")


def test_rocket_bench_sizes_steps_to_the_run_not_the_preset(tmp_path):
    """The pool gets what the largest step's activations leave: a 32k run under a 128k-token preset would lose
    ~17 GB of pool on the H100 to a step it never takes. A prompt fits beside the whole decoding batch."""
    from rocket_trtllm.bench import build_args, parse_args

    config = tmp_path / "long.yaml"
    config.write_text("max_num_tokens: 131328\nmax_seq_len: 131328\n")
    ns = parse_args([str(SHIPPED_MODEL), "--config", str(config), "--input-len", "300", "--output-len", "8"])
    assert build_args(str(SHIPPED_MODEL), str(config), ns, batch=4).max_num_tokens == 304
    assert build_args(str(SHIPPED_MODEL), str(config), ns, batch=0).max_num_tokens == 300 + 2048  # --max-batch


def test_serve_costs_accounts_every_step(tmp_path):
    """benchmarks/serve_costs.py on the shipped model: every prompt's prefill step and the decode steps between
    them are counted, with the HTTP thread's CPU time, and the client's JSON is written beside."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "serve_costs.py"
    out, client = tmp_path / "costs.json", tmp_path / "client.json"
    cmd = [sys.executable, str(script), str(SHIPPED_MODEL), "--input-len", "64", "--output-len", "16",
           "--concurrency", "4", "--prompts", "8", "--json", str(out), "--client-json", str(client)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    figures = json.loads(out.read_text())
    assert figures["prefill_steps"] >= 1 and figures["prefill_decodes_beside_mean"] >= 0
    # 8 requests of 16 tokens: the first token of each comes from its prefill step, 15 more from decode steps.
    assert 15 <= figures["decode_steps"] <= 8 * 15 and 1 <= figures["decode_mean_batch"] <= 4
    assert figures["http_cpu_ms_per_decode_step"] > 0 and figures["decode_wall_ms_p50"] > 0
    assert json.loads(client.read_text())["runs"][0]["completed"] == 8
