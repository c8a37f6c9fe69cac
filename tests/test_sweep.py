"""rocket-bench sweep on the CPU: the report's fields, counts that must add up, the ratios, the plot, merging."""

import json

import pytest

from rocket_trtllm import bench
from rocket_trtllm.sweep_report import merge, ratios

ROCKET = """\
sparse_attention_config:
  algorithm: rocket
  prompt_budget: 32
  window_size: 8
  kernel_size: 5
  page_size: 4
  topk: 4
kv_cache_config:
  enable_block_reuse: false
  tokens_per_block: 16
  max_tokens: 1024
"""

INPUT, OUTPUT = 80, 6


@pytest.fixture(scope="module")
def report(llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    config = root / "rocket.yaml"
    config.write_text(ROCKET)
    out = root / "sweep.json"
    argv = ["--model", str(llama_dir), "sweep", "--config", str(config), "--compare", "dense",
            "--input-len", str(INPUT), "--output-len", str(OUTPUT), "--concurrency", "1", "2", "max",
            "--json", str(out), "--plot", str(root / "sweep.png")]  # fmt: skip
    bench.main(argv)
    return json.loads(out.read_text()), root


FIELDS = ("method", "concurrency", "num_requests", "output_tokens_per_s", "tokens_per_s_per_user",
          "e2e_tokens_per_s_per_user", "ttft_s", "tpot_s", "peak_gpu_memory_gib", "prefill_s", "decode_s")  # fmt: skip


def test_every_point_reports_the_issue_fields(report):
    data, root = report
    assert data["input_len"] == INPUT and data["output_len"] == OUTPUT and data["device"] == "cpu"
    points = {(p["method"], p["concurrency_arg"]): p for p in data["points"]}
    assert {m for m, _ in points} == {"rocket", "dense"}
    for p in data["points"]:
        assert all(f in p for f in FIELDS), p
        assert set(p["ttft_s"]) == set(p["tpot_s"]) == {"mean", "p99"}
        assert p["output_tokens_per_s"] > 0 and p["tokens_per_s_per_user"] > 0 and p["e2e_tokens_per_s_per_user"] > 0
        assert 0 < p["ttft_s"]["mean"] <= p["ttft_s"]["p99"] + 1e-12
    # max: the most requests each pool holds at once; a point the pool cannot hold is left to it
    for method, info in data["methods"].items():
        assert points[method, "max"]["concurrency"] == info["capacity"]
        ran = {c for m, c in points if m == method and c != "max"}
        assert ran == {c for c in (1, 2) if c < info["capacity"]}
        assert set(info["skipped_concurrencies"]) == {1, 2} - ran
    assert data["methods"]["rocket"]["capacity"] > data["methods"]["dense"]["capacity"]  # eviction keeps 32 of 80
    assert (root / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_counts_add_up(report):
    data, _ = report
    for p in data["points"]:
        n = p["num_requests"]
        assert n == 2 * p["concurrency"]  # the default: each concurrency filled twice
        assert p["output_tokens"] == n * OUTPUT  # exact lengths, ignore_eos
        assert p["prompt_tokens"] == n * INPUT
        assert p["mean_decode_batch"] <= p["concurrency"] + 1e-9  # a closed loop never holds more
        assert p["prefill_s"] + p["decode_s"] <= p["duration_s"] + 1e-6
        if p["concurrency"] == 1:  # one request at a time: a prefill step, then a decode step per later token
            assert p["prefill_steps"] == n
            assert p["decode_steps"] == n * (OUTPUT - 1)
            assert p["mean_decode_batch"] == 1.0
        if p["method"] == "rocket":
            assert p["kept_prompt_tokens"] == 32


def test_ratios_against_dense(report):
    data, _ = report
    r = data["ratios_vs_dense"]["rocket"]
    rocket = [p for p in data["points"] if p["method"] == "rocket"]
    dense = [p for p in data["points"] if p["method"] == "dense"]
    best = max(p["output_tokens_per_s"] for p in rocket) / max(p["output_tokens_per_s"] for p in dense)
    assert r["max_throughput"] == pytest.approx(best)
    both = {p["concurrency_arg"] for p in dense} & {p["concurrency_arg"] for p in rocket} - {"max"}
    assert set(r["tokens_per_s_per_user"]) == {str(c) for c in both}
    assert r["slower_per_user_at"] == [c for c, v in r["tokens_per_s_per_user"].items() if v < 1]
    low = {p["method"]: p for p in data["points"] if p["concurrency_arg"] == 1}
    per_request = {m: p["prefill_s"] / p["num_requests"] for m, p in low.items()}
    ratio = pytest.approx(per_request["rocket"] / per_request["dense"])
    assert r["prefill_s_per_request"] == {"concurrency": 1, "ratio": ratio}


def test_merge_replaces_a_point_and_keeps_the_rest(report, tmp_path):
    data, _ = report
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(data))
    redo = dict(data["points"][0], output_tokens_per_s=1e9)
    second.write_text(json.dumps(dict(data, points=[redo])))
    merged = merge([str(first), str(second)])
    assert len(merged["points"]) == len(data["points"])
    assert redo in merged["points"]
    assert ratios(merged["points"])["rocket"]["max_throughput"] > 1e3
    other = tmp_path / "c.json"
    other.write_text(json.dumps(dict(data, input_len=INPUT + 1)))
    with pytest.raises(SystemExit, match="sweep"):
        merge([str(first), str(other)])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "--arch", "llama-3.1-8b"], "--random-weights"),
        (["--model", "m", "sweep", "--concurrency", "0"], "integer >= 1 or 'max'"),
        (["--model", "m", "sweep", "--concurrency", "many"], "integer >= 1 or 'max'"),
        (["sweep"], "MODEL"),
        (["--tp-size", "2", "sweep"], "only --model MODEL, --arch NAME, --random-weights"),
    ],
)
def test_bad_arguments_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert message in capsys.readouterr().err + str(exit_.value)
