"""lm-eval's own command line runs `--model rocket-trtllm` on local tasks of all three request kinds;
every logged response must be what the engine gives for the same request."""

import json
import os
import subprocess
import sys

import pytest

from rocket_trtllm import LLM, SamplingParams

pytest.importorskip("lm_eval")

DOCS = [
    {"question": "The cat sat on the", "choices": ["mat", "moon", "xq"], "label": 0, "answer": "mat"},
    {"question": "One, two, three,", "choices": ["four", "zz"], "label": 0, "answer": "four"},
    {"question": "Paris is in", "choices": ["France", "a box", "7"], "label": 0, "answer": "France"},
]

TASKS = {
    "rocket_tiny_mc": """
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
""",
    "rocket_tiny_gen": """
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["e"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
    "rocket_tiny_ppl": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{question}}"
metric_list:
  - metric: word_perplexity
""",
}


def write_tasks(root):
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, body in TASKS.items():
        head = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        (root / f"{name}.yaml").write_text(head + body)


def logged(out_dir, task):
    [path] = list(out_dir.rglob(f"samples_{task}_*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lm_eval_cli_runs_rocket_model_on_local_tasks(llama_dir, tmp_path):
    tasks_dir, out_dir = tmp_path / "tasks", tmp_path / "out"
    tasks_dir.mkdir()
    write_tasks(tasks_dir)
    config = tmp_path / "rocket.yaml"
    config.write_text(
        "sparse_attention_config:\n  algorithm: rocket\n  prompt_budget: 16\n  window_size: 4\n  kernel_size: 3\n"
        "  topk: 2\n  page_size: 4\n  topr: 8\nkv_cache_config:\n  enable_block_reuse: false\n"
    )
    cmd = [sys.executable, "-m", "rocket_trtllm.eval.lm_eval_model", "--model", "rocket-trtllm",
           "--model_args", f"pretrained={llama_dir},config={config},dtype=float32",
           "--tasks", ",".join(TASKS), "--include_path", str(tasks_dir),
           "--output_path", str(out_dir), "--log_samples"]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [results] = list(out_dir.rglob("results_*.json"))
    metrics = json.loads(results.read_text())["results"]
    assert 0.0 <= metrics["rocket_tiny_mc"]["acc,none"] <= 1.0
    assert metrics["rocket_tiny_ppl"]["word_perplexity,none"] > 1.0

    # The same requests straight to the engine, with the same config.
    with LLM.from_yaml(config, model=str(llama_dir), dtype="float32") as llm:
        tok = llm.tokenizer
        for sample in logged(out_dir, "rocket_tiny_mc"):
            doc = sample["doc"]
            pairs = []
            for choice in doc["choices"]:
                context = tok.encode(doc["question"])
                whole = tok.encode(doc["question"] + " " + choice)  # lm-eval's target delimiter: a space
                pairs.append((context, whole[len(context) :]))
            want = llm.score(pairs, use_tqdm=False)
            got = [r[0] for r in sample["resps"]]  # logged as strings
            assert [g[1] for g in got] == [str(w[1]) for w in want]
            assert [float(g[0]) for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)
        for sample in logged(out_dir, "rocket_tiny_gen"):
            params = SamplingParams(max_tokens=6, temperature=0.0, stop=["e"])
            want = llm.generate(sample["doc"]["question"], params).outputs[0].text
            assert sample["resps"][0][0] == want and "e" not in want
        for sample in logged(out_dir, "rocket_tiny_ppl"):
            text = tok.encode(sample["doc"]["question"], add_special_tokens=False)
            [(want, _)] = llm.score([([tok.bos_token_id], text)], use_tqdm=False)
            assert float(sample["resps"][0][0]) == pytest.approx(want, abs=1e-4)


def run_lm_eval(model, model_args, tasks, tasks_dir, out_dir, *extra):
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", tasks,
           "--include_path", str(tasks_dir), "--output_path", str(out_dir), "--log_samples", *extra]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "unused"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def test_lm_eval_api_models_against_rocket_serve(tmp_path):
    """lm-eval's own OpenAI-API models against rocket-serve on loopback (the shipped model): `local-completions`
    scores a multiple-choice task through echo + logprobs, `local-chat-completions` generates; every logged answer
    is what the engine gives for the same request."""
    pytest.importorskip("tenacity")  # lm-eval's [api] extra
    from rocket_trtllm.eval import SHIPPED_MODEL

    from rocket_trtllm.serve.soak import local_server

    tasks_dir, out_dir = tmp_path / "tasks", tmp_path / "out"
    tasks_dir.mkdir()
    write_tasks(tasks_dir)
    with LLM(str(SHIPPED_MODEL), dtype="float32", max_seq_len=512) as llm, local_server(llm, "model") as base:
        tok = llm.tokenizer
        args = f"base_url={base}/completions,model=model,tokenizer_backend=huggingface,tokenizer={SHIPPED_MODEL}"
        run_lm_eval("local-completions", args, "rocket_tiny_mc", tasks_dir, out_dir / "completions",
                    "--batch_size", "3")  # fmt: skip
        for sample in logged(out_dir / "completions", "rocket_tiny_mc"):
            doc = sample["doc"]
            context = tok.encode(doc["question"], add_special_tokens=False)
            pairs = []
            for choice in doc["choices"]:
                whole = tok.encode(doc["question"] + " " + choice, add_special_tokens=False)
                pairs.append((context, whole[len(context) :]))
            want = llm.score(pairs, use_tqdm=False)
            got = [r[0] for r in sample["resps"]]
            assert [float(g[0]) for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)
            assert [g[1] for g in got] == [str(w[1]) for w in want]
        args = f"base_url={base}/chat/completions,model=model"
        run_lm_eval("local-chat-completions", args, "rocket_tiny_gen", tasks_dir, out_dir / "chat",
                    "--apply_chat_template")  # fmt: skip
        for sample in logged(out_dir / "chat", "rocket_tiny_gen"):
            messages = [{"role": "user", "content": sample["doc"]["question"]}]
            ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                             add_special_tokens=False)  # fmt: skip
            want = llm.generate(ids, SamplingParams(max_tokens=6, temperature=0.0, stop=["e"])).outputs[0].text
            assert sample["resps"][0][0] == want
