import json

import pytest
from rocket_trtllm.eval.cli import main
from rocket_trtllm.eval.tasks import TASKS, Sample, make_samples


@pytest.mark.parametrize("task", sorted(TASKS))
def test_samples_are_deterministic_checkable_and_sized(task):
    a = make_samples(task, 600, 3, seed=7)
    assert [s.prompt for s in a] == [s.prompt for s in make_samples(task, 600, 3, seed=7)]
    assert [s.prompt for s in a] != [s.prompt for s in make_samples(task, 600, 3, seed=8)]
    for s in a:
        assert abs(len(s.prompt) - 600) <= 2  # `len` counts characters: the default tokenizer here
        assert all(answer in s.prompt for answer in s.answers)
        assert s.score(" ".join(s.answers)) == 1.0 and s.score("no idea") == 0.0


def test_partial_answers_score_partially():
    s = Sample("niah_multivalue", "", ["1234567", "7654321"])
    assert s.score("1234567 and something else") == 0.5


def test_unknown_task_names_the_choices():
    with pytest.raises(ValueError, match="niah_single"):
        make_samples("nope", 100, 1, 0)


def test_sweep_runs_every_algorithm_and_writes_results(llama_dir, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    md = tmp_path / "sweep.md"
    main([str(llama_dir), "niah_single", "--lengths", "300", "--samples", "2", "--max-tokens", "4",
          "--sweep", "--budgets", "64", "--json", str(out), "--markdown", str(md)])  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert {r["algorithm"] for r in rows} == {"full", "rocket", "snapkv", "quest", "streamingllm", "topk_oracle"}
    assert all(0.0 <= r["accuracy"] <= 100.0 and r["samples"] == 2 for r in rows)
    assert "| rocket | 64 |" in md.read_text() and "| full | all |" in capsys.readouterr().out


def test_plot_of_a_sweep(llama_dir, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    main([str(llama_dir), "niah_single", "--lengths", "300", "--samples", "1", "--max-tokens", "2",
          "--sweep", "--algorithms", "full", "rocket", "--budgets", "64", "128", "--plot", str(png)])  # fmt: skip
    assert png.stat().st_size > 1000
