"""The docs against the code: the generated reference lists every config field and every command flag, every YAML
block in README and docs/ loads with LlmArgs, every rocket-* command line parses with its command's parser, the
paths they name exist, and the Python blocks marked to run on the CPU run."""

import re
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from rocket_trtllm.eval import cli as eval_cli

from rocket_trtllm import LlmArgs, bench, docgen
from rocket_trtllm.sparse import algorithms

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, body) of every fenced block of `language` in README and docs/."""
    found = []
    for page in PAGES:
        for lang, body in FENCE.findall(page.read_text()):
            if lang == language:
                found.append((str(page.relative_to(ROOT)), body))
    return found


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n### ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


# ---- the generated reference ---------------------------------------------------------------------------------------


def test_config_reference_lists_every_field_of_every_class():
    text = docgen.config_reference()
    classes = docgen.config_classes()
    sparse = {c.model_fields["algorithm"].default for c in classes if "algorithm" in c.model_fields}
    assert sparse == set(algorithms())  # every registered method has its section
    for cls in classes:
        part = section(text, f"### {cls.__name__} ")
        for name in cls.model_fields:
            assert f"| `{name}` |" in part, (cls.__name__, name)
    part = section(text, "### SamplingParams ")
    from dataclasses import fields

    from rocket_trtllm import SamplingParams

    assert all(f"| `{f.name}` |" in part for f in fields(SamplingParams))


def test_cli_reference_lists_every_flag_of_every_command():
    text = docgen.cli_reference()
    commands = docgen.commands()
    scripts = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("rocket_trtllm.")}
    assert scripts <= set(commands) | {"rocket-lm-eval"}, scripts - set(commands)
    assert "### rocket-lm-eval" in text
    for name, build in commands.items():
        part = section(text, f"### {name}\n")
        for action in docgen.flags(build()):
            names = action.option_strings or [action.metavar or action.dest]
            for flag in names:
                assert f"`{flag}`" in part, (name, flag)


def test_http_reference_lists_every_route_and_metric():
    text = docgen.http_reference()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/metrics", "/health"} <= {
        path for _, path, _ in docgen.routes()
    }
    for _, path, _ in docgen.routes():
        assert f"`{path}`" in text
    for name, _, _ in docgen.metric_rows():
        assert f"`{name}`" in text


def test_every_generated_section_a_page_asks_for_is_filled():
    asked = [p for p in PAGES if "<!-- generated:" in p.read_text()]
    assert {p.name for p in asked} == {"config.md", "cli.md", "http.md"}
    for page in asked:
        assert "<!-- generated:" not in docgen.expand(page.read_text())
    with pytest.raises(KeyError, match="no generated section"):
        docgen.expand("<!-- generated: nothing -->")


# ---- docs that run -------------------------------------------------------------------------------------------------


YAML = blocks("yaml")


@pytest.mark.parametrize("page, body", YAML, ids=[f"{p}:{i}" for i, (p, _) in enumerate(YAML)])
def test_yaml_blocks_load_with_llm_args(page, body, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(body)
    LlmArgs.from_yaml(path, model="model")


def command_lines() -> list[tuple[str, str]]:
    """(page, command) of every rocket-* (or soak module) command in the shell blocks, continuations joined, command
    substitutions checked on their own."""
    found = []
    for lang in ("bash", "shell", "sh"):
        for page, body in blocks(lang):
            for line in body.replace("\\\n", " ").splitlines():
                for inner in re.findall(r"\$\(([^()]*)\)", line):
                    found.append((page, inner))
                line = re.sub(r'"?\$\([^()]*\)"?', "MODEL", line)
                lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
                lexer.whitespace_split = True
                tokens, current = [], []
                for token in lexer:
                    if token in ("&&", "||", ";", "|", "&"):
                        tokens.append(current)
                        current = []
                    else:
                        current.append(token)
                tokens.append(current)
                for words in tokens:
                    while words and re.match(r"^\w+=", words[0]):  # VAR=value before the command
                        words = words[1:]
                    if words and (words[0].startswith("rocket-") or words[:3] == ["python", "-m", SOAK]):
                        found.append((page, shlex.join(words)))
    return found


SOAK = "rocket_trtllm.serve.soak"
COMMANDS = command_lines()


def parse(words: list[str]) -> None:
    """Parse a command line as its command would (argparse exits with its message on a wrong flag)."""
    name, args = words[0], words[1:]
    parsers = docgen.commands()
    if name == "rocket-bench":
        picked = bench.subcommand(args)
        if picked is None:
            bench.build_parser().parse_args(args)
        else:
            parsers[f"rocket-bench {picked[0]}"]().parse_args(picked[2])
    elif name == "rocket-eval":
        eval_cli.build_parser().parse_args(eval_cli.trtllm_shape(args))
    elif name == "rocket-lm-eval":
        assert args[:2] == ["--model", "rocket-trtllm"]
    elif name == "python":
        parsers[f"python -m {SOAK}"]().parse_args(args[2:])
    else:
        parsers[name]().parse_args(args)


def test_the_docs_show_every_command():
    shown = {shlex.split(c)[0] for _, c in COMMANDS}
    assert {"rocket-serve", "rocket-bench", "rocket-eval", "rocket-lm-eval", "rocket-fetch", "rocket-quantize"} <= shown


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(COMMANDS)])
def test_command_lines_parse_and_name_files_that_exist(page, command, capsys):
    words = shlex.split(command)
    try:
        parse(words)
    except SystemExit as e:
        pytest.fail(f"{page}: `{command}` does not parse: {capsys.readouterr().err.strip() or e}")
    for word in words:
        if re.match(r"^(configs|benchmarks|examples|eval)/[\w./-]+$", word) and "*" not in word:
            assert (ROOT / word).exists(), f"{page}: `{command}` names {word}, which does not exist"


RUNNABLE = [(p, b) for p, b in blocks("python") if b.startswith("# runs on the CPU")]


@pytest.mark.parametrize("page, body", RUNNABLE, ids=[p for p, _ in RUNNABLE])
def test_python_blocks_marked_to_run_on_the_cpu_run(page, body, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(body)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{page}:\n{done.stderr[-3000:]}"


def test_quickstart_block_is_marked_to_run():
    assert any(p == "docs/getting-started/install.md" for p, _ in RUNNABLE)


def test_readme_fits_two_screens_and_starts_with_its_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 100, len(lines)
    first = FENCE.search((ROOT / "README.md").read_text())
    assert first.group(1) == "bash"
    install, test = first.group(2).strip().splitlines()
    assert "pip install" in install and "-e" in install and test == "python -m pytest -q tests"
