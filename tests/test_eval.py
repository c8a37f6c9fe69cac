import json

import pytest
from rocket_trtllm.eval.cli import main, parse_args, rocket_reads, rocket_token_budget, runs
from rocket_trtllm.eval.report import main as report_main
from rocket_trtllm.eval.tasks import PROSE_ONLY, TASKS, Sample, make_conversations, make_samples


@pytest.mark.parametrize("task", sorted(set(TASKS) - PROSE_ONLY))
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
    assert {r["algorithm"] for r in rows} == {"full", "rocket", "rocket_official", "rocket_mt", "snapkv", "quest",
                                              "streamingllm", "topk_oracle"}  # fmt: skip
    assert all(0.0 <= r["accuracy"] <= 100.0 and r["samples"] == 2 for r in rows)
    paid = {r["algorithm"]: r["tokens_equivalent_per_step"] for r in rows}
    assert paid["full"] > 300 and paid["rocket"] < paid["full"] and paid["streamingllm"] <= 64
    assert "| rocket | 64 |" in md.read_text() and "| full | all |" in capsys.readouterr().out


def test_sweep_flags_reach_the_stage1_configs(llama_dir):
    from rocket_trtllm.eval.cli import parse_args, runs

    ns = parse_args([str(llama_dir), "niah_single", "--sweep", "--algorithms", "rocket", "snapkv", "--budgets", "64",
                     "128", "--prompt-ratio", "4", "--window-size", "16", "--eviction-scope", "layer"])  # fmt: skip
    configs = {(name, budget): args.sparse_attention_config for name, budget, args in runs(ns)}
    assert [configs["rocket", b].prompt_budget for b in (64, 128)] == [256, 512]
    assert [configs["rocket", b].topk for b in (64, 128)] == [16, 32]
    assert {(c.window_size, c.eviction_scope) for c in configs.values()} == {(16, "layer")}


def test_plot_of_a_sweep(llama_dir, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    main([str(llama_dir), "niah_single", "--lengths", "300", "--samples", "1", "--max-tokens", "2",
          "--sweep", "--algorithms", "full", "rocket", "--budgets", "64", "128", "--plot", str(png)])  # fmt: skip
    assert png.stat().st_size > 1000


def longbench_records(n=6):
    """Records in LongBench v2's official format (data.json)."""
    return [
        {"_id": f"id{i}", "domain": "Single-Document QA", "sub_domain": "Financial",
         "difficulty": ["easy", "hard"][i % 2], "length": ["short", "medium", "long"][i % 3],
         "question": f"Which number is {i}?", "choice_A": "one", "choice_B": "two", "choice_C": "three",
         "choice_D": "four", "answer": "ABCD"[i % 4], "context": f"Context {i}. " + "filler words " * 40}
        for i in range(n)
    ]  # fmt: skip


def test_longbench_answer_extraction_follows_the_official_patterns():
    from rocket_trtllm.eval.longbench import extract_answer

    assert extract_answer("The correct answer is (B).") == "B"
    assert extract_answer("**The correct answer is (C)**") == "C"
    assert extract_answer("The correct answer is D") == "D"
    assert extract_answer("I think (A)") is None and extract_answer("The correct answer is (E)") is None


def test_longbench_scores_overall_by_difficulty_and_length():
    from rocket_trtllm.eval.longbench import score

    records = longbench_records()
    responses = [f"The correct answer is ({r['answer']})" if i < 3 else "no idea" for i, r in enumerate(records)]
    result = score(records, responses)
    assert result["overall"] == {"accuracy": 50.0, "samples": 6}
    # right: id0 (easy, short), id1 (hard, medium), id2 (easy, long)
    assert result["easy"]["accuracy"] == pytest.approx(200 / 3) and result["hard"]["accuracy"] == pytest.approx(100 / 3)
    by_length = {k: result[k]["accuracy"] for k in ("short", "medium", "long")}
    assert by_length == {"short": 50.0, "medium": 50.0, "long": 50.0}


def test_longbench_loader_names_what_is_wrong(tmp_path):
    from rocket_trtllm.eval.longbench import load

    path = tmp_path / "data.json"
    records = longbench_records(2)
    path.write_text(json.dumps(records))
    assert load(str(path)) == records
    del records[1]["choice_C"]
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record 1 lacks choice_C"):
        load(str(path))
    records = longbench_records(2)
    records[0]["difficulty"] = "medium"
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="difficulty='medium'; allowed: easy, hard"):
        load(str(path))


def test_longbench_prompt_is_the_official_template_cut_in_the_middle(llama_dir):
    from rocket_trtllm.eval.longbench import prompt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_dir)
    record = longbench_records(1)[0]
    full = tok.decode(prompt(record, tok, 10**6), skip_special_tokens=True)
    assert full.startswith("Please read the following text and answer the question below.\n\n<text>\nContext 0.")
    assert "What is the correct answer to this question: Which number is 0?\nChoices:\n(A) one\n" in full
    assert full.endswith('Format your response as follows: "The correct answer is (insert answer here)".')
    text = tok.decode(prompt(record, tok, 300), skip_special_tokens=True)
    assert len(tok.encode(text, add_special_tokens=False)) == 300
    assert text[:150] == full[:150] and text[-150:] == full[-150:] and "Context 0." in text


def test_rocket_eval_runs_longbench_v2_from_a_local_file(llama_dir, tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(longbench_records(3)))
    out = tmp_path / "lb.json"
    main([str(llama_dir), "longbench_v2", "--dataset", str(data), "--truncate", "400", "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    subsets = {r["length"]: r["samples"] for r in rows}
    assert subsets == {"overall": 3, "easy": 2, "hard": 1, "short": 1, "medium": 1, "long": 1}


def test_rocket_eval_longbench_v2_without_a_dataset_is_an_error(llama_dir, capsys):
    with pytest.raises(SystemExit):
        main([str(llama_dir), "longbench_v2"])
    assert "needs --dataset" in capsys.readouterr().err


def test_shipped_model_retrieves_and_rocket_eval_sweeps_it_on_cpu(tmp_path):
    from rocket_trtllm.eval import SHIPPED_MODEL
    from transformers import AutoTokenizer

    assert sum(f.stat().st_size for f in SHIPPED_MODEL.iterdir()) < 30 * 2**20
    tok = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    assert tok.decode(tok.encode("VAR ABCD = 1234567."), skip_special_tokens=True) == "VAR ABCD = 1234567."
    out = tmp_path / "sweep.json"
    main([str(SHIPPED_MODEL), "niah_single", "variable_tracking", "--lengths", "1024", "--samples", "3",
          "--max-tokens", "40", "--sweep", "--algorithms", "full", "rocket", "--budgets", "256",
          "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    full = [r["accuracy"] for r in rows if r["algorithm"] == "full"]
    assert full == [100.0, 100.0]  # the model really retrieves: every needle and every variable
    assert {r["algorithm"] for r in rows} == {"full", "rocket"}


def test_trtllm_eval_command_shape(tmp_path):
    from rocket_trtllm.eval import SHIPPED_MODEL
    from rocket_trtllm.eval.cli import parse_args

    data = tmp_path / "data.json"
    data.write_text(json.dumps(longbench_records(2)))
    config = tmp_path / "extra_config.yaml"
    config.write_text("sparse_attention_config:\n  algorithm: rocket\n  prompt_budget: 128\n  topr: 1.0\n")
    argv = ["--model", str(SHIPPED_MODEL), "--config", str(config), "longbench_v2", "--max_output_length", "8",
            "--dataset_path", str(data), "--max_input_length", "400"]  # fmt: skip
    ns = parse_args(argv)
    assert (ns.model, ns.tasks, ns.max_output_length, ns.truncate) == (str(SHIPPED_MODEL), ["longbench_v2"], 8, 400)
    out = tmp_path / "lb.json"
    main([*argv, "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert {r["algorithm"] for r in rows} == {"rocket"} and {r["length"]: r["samples"] for r in rows}["overall"] == 2


def test_conversations_are_deterministic_sized_and_ask_each_fact_once():
    a = make_conversations(800, 3, seed=1, turns=4)
    assert [c.opening for c in a] == [c.opening for c in make_conversations(800, 3, seed=1, turns=4)]
    for c in a:
        assert abs(len(c.opening) - 800) <= 16 and c.turns == 4 and len(c.follow_ups) == 3
        assert all(answer in c.opening for answer in c.answers) and len(set(c.answers)) == 4
        asked = [c.opening.rsplit("Question: ", 1)[1]] + [f.split("Question: ", 1)[1] for f in c.follow_ups]
        assert len(set(asked)) == 4


def test_shipped_model_answers_every_turn_and_the_cache_serves_later_turns(tmp_path):
    from rocket_trtllm.eval import SHIPPED_MODEL

    out = tmp_path / "turns.json"
    main([str(SHIPPED_MODEL), "multiturn", "--lengths", "1024", "--samples", "6", "--turns", "3",
          "--max-tokens", "12", "--sweep", "--algorithms", "full", "rocket", "rocket_mt", "--budgets", "128",
          "--json", str(out)])  # fmt: skip
    rows = {(r["algorithm"], r["task"]): r for r in json.loads(out.read_text())["results"]}
    assert [rows["full", f"multiturn_t{t}"]["accuracy"] for t in (1, 2, 3)] == [100.0, 100.0, 100.0]
    for method in ("full", "rocket_mt"):  # later turns find the conversation so far cached
        turn1, turn2 = (rows[method, f"multiturn_t{t}"]["cached_prompt_fraction"] for t in (1, 2))
        assert turn2 > 0.9 and turn2 > turn1  # turn 1 shares only the filler before the first fact
    assert rows["rocket", "multiturn_t2"]["cached_prompt_fraction"] == 0.0  # eviction: no block reuse


def test_bytes_mode_gives_methods_about_the_same_bytes(llama_dir, tmp_path):
    out = tmp_path / "bytes.json"
    main([str(llama_dir), "niah_single", "--lengths", "600", "--samples", "2", "--max-tokens", "4", "--sweep",
          "--budget-mode", "bytes", "--budgets", "128", "--algorithms", "rocket", "rocket_official", "snapkv", "quest",
          "--window-size", "8", "--json", str(out)])  # fmt: skip
    paid = {r["algorithm"]: r["tokens_equivalent_per_step"] for r in json.loads(out.read_text())["results"]}
    assert paid["snapkv"] <= 128 + 4 and 64 <= paid["quest"] <= 128 + 16  # the budget, give or take a page
    for rocket in ("rocket", "rocket_official"):  # attended pages plus the KT pages, at the largest fitting split
        assert 64 <= paid[rocket] <= 128 + 8, paid  # (float32 K/V here: its KT pages weigh less than in bf16)


def test_rocket_token_budget_is_the_largest_split_that_fits():
    for length, budget in [(2048, 128), (8192, 256), (32768, 1024)]:
        for bounds in (1, 2):
            chosen = rocket_token_budget(budget, length, bounds)
            assert rocket_reads(chosen, length, bounds) <= budget < rocket_reads(chosen + 1, length, bounds)
    assert rocket_token_budget(1024, 600) == 1024  # a budget past the sequence: everything, as dense


def test_report_merges_seeds_into_one_cell(tmp_path):
    def run(accuracy: float, read: float) -> dict:
        rows = [{"algorithm": "rocket", "budget": 128, "task": "passkey", "length": 2048, "samples": 40,
                 "accuracy": accuracy, "tokens_equivalent_per_step": read}]  # fmt: skip
        return {"args": {}, "results": rows}

    files = []
    for i, (accuracy, read) in enumerate([(50.0, 120.0), (60.0, 124.0)]):
        files.append(tmp_path / f"seed{i}.json")
        files[-1].write_text(json.dumps(run(accuracy, read)))
    report_main([str(f) for f in files] + ["--json", str(tmp_path / "both.json"), "--markdown", str(tmp_path / "t.md")])
    (row,) = json.loads((tmp_path / "both.json").read_text())["results"]
    assert (row["accuracy"], row["samples"], row["tokens_equivalent_per_step"]) == (55.0, 80, 122.0)
    assert "| rocket | 128 | 55.0 | 55.0 | 122 |" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize(
    "flags, bound, temperature",
    [
        (["--budget-mode", "bytes"], "sign", False),
        ([], "sign", False),
        (["--stage2-scoring", "official"], "sign", True),
        (["--budget-mode", "bytes", "--stage2-scoring", "quest"], "both", False),
    ],  # fmt: skip
)
def test_stage2_scoring_is_tensorrt_llms_unless_asked(flags, bound, temperature):
    from rocket_trtllm.eval import SHIPPED_MODEL

    ns = parse_args(
        [str(SHIPPED_MODEL), "niah_single", "--sweep", "--algorithms", "rocket", "--budgets", "256", *flags]
    )
    ((_, _, args),) = runs(ns)
    sparse = args.sparse_attention_config
    assert (sparse.stage2_bound, sparse.stage2_temperature) == (bound, temperature)
