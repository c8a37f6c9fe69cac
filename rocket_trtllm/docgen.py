"""The docs' reference pages, generated from the code whenever the site is built: every config class's fields, every
command's flags, the HTTP endpoints, request bodies and metrics. A page asks for a section with a line
`<!-- generated: NAME -->` (docs/hooks.py puts it there); tests/test_docs.py checks the sections list everything."""

import argparse
import ast
import dataclasses
import importlib.util
import typing
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

# ---- config classes ----------------------------------------------------------------------------------------------


def config_classes() -> list[type[BaseModel]]:
    """LlmArgs and its parts, then each registered sparse method's config (RocketKV's first)."""
    from .llmapi.llm_args import CudaGraphConfig, KvCacheConfig, LlmArgs, QuantConfig
    from .sparse import algorithms, lookup

    methods = sorted(algorithms(), key=lambda name: (not name.startswith("rocket"), name))
    return [LlmArgs, KvCacheConfig, CudaGraphConfig, QuantConfig, *(lookup(name).config_cls for name in methods)]


def anchor(cls: type) -> str:
    return cls.__name__.lower()


def type_text(annotation: Any) -> str:
    """A field's type as a reader says it: `int or null`, `list of int`, a link to a nested config."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "str"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is Union:
        parts = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(parts)) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {type_text(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation.__name__ == "BaseSparseAttentionConfig":
            return "a sparse method's config (by `algorithm`)"
        return f"[{annotation.__name__}](#{anchor(annotation)})"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return f"[defaults](#{anchor(type(value))})" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{yaml_value(field.default)}`"


def yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def constraints(cls: type[BaseModel]) -> dict[str, list[str]]:
    """Per field, what it must be: a Literal's choices, and each field validator's docstring (the rule it checks)."""
    out: dict[str, list[str]] = defaultdict(list)
    for name, field in cls.model_fields.items():
        if typing.get_origin(field.annotation) is typing.Literal:
            out[name].append(", ".join(f"`{v}`" for v in typing.get_args(field.annotation)))
    for decorator in cls.__pydantic_decorators__.field_validators.values():
        doc = decorator.func.__doc__
        for name in decorator.info.fields:
            if doc:
                out[name].append(doc.strip())
    return out


RULE_METHODS = ("_check_cross_field", "check_llm_args", "check_model")


def rules(cls: type[BaseModel]) -> list[str]:
    """The cross-field rules: each model validator's docstring, and those of the checks run against the rest of the
    run's arguments or the model (as defined on the class or inherited)."""
    found = [d.func.__doc__ for d in cls.__pydantic_decorators__.model_validators.values() if d.info.mode == "after"]
    for name in RULE_METHODS:
        method = getattr(cls, name, None)
        found.append(getattr(method, "__doc__", None))
    return [" ".join(doc.split()) for doc in dict.fromkeys(found) if doc]


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def first_paragraph(doc: str) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def config_section(cls: type[BaseModel]) -> str:
    lines = [f"### {cls.__name__} {{#{anchor(cls)}}}", "", first_paragraph(cls.__doc__), ""]
    if "algorithm" in cls.model_fields:
        lines += [f"YAML: `sparse_attention_config:` with `algorithm: {cls.model_fields['algorithm'].default}`.", ""]
    lines += ["| field | type | default | constraint | description |", "|---|---|---|---|---|"]
    limits = constraints(cls)
    for name, field in cls.model_fields.items():
        description = field.description or ("Picks this method." if name == "algorithm" else "")
        row = [f"`{name}`", type_text(field.annotation), default_text(field), "; ".join(limits.get(name, [])),
               description]  # fmt: skip
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    found = rules(cls)
    if found:
        lines += ["", "Rules across fields: " + " ".join(found)]
    return "\n".join(lines)


def sampling_params_section() -> str:
    from .sampling_params import SamplingParams

    lines = ["### SamplingParams {#samplingparams}", "", first_paragraph(SamplingParams.__doc__), "",
             "| field | type | default | description |", "|---|---|---|---|"]  # fmt: skip
    for f in dataclasses.fields(SamplingParams):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        row = [f"`{f.name}`", type_text(f.type), f"`{yaml_value(default)}`", f.metadata.get("doc", "")]
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines)


def config_reference() -> str:
    return "\n\n".join([*(config_section(cls) for cls in config_classes()), sampling_params_section()]) + "\n"


# ---- command lines -----------------------------------------------------------------------------------------------


def commands() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    """Every command's parser: the console scripts (`rocket-bench NAME` for each subcommand) and the module commands
    the docs name. rocket-lm-eval is lm-eval's own parser and is described, not listed."""
    from . import bench, quantize
    from .eval import cli as eval_cli
    from .eval import fetch
    from .serve import cli as serve_cli
    from .serve import soak

    found: dict[str, Callable[[], argparse.ArgumentParser]] = {
        "rocket-serve": serve_cli.build_parser,
        "rocket-bench": bench.build_parser,
    }
    for name in bench.SUBCOMMANDS:
        found[f"rocket-bench {name}"] = lambda name=name: bench.subcommand_parser(name)
    found.update({
        "rocket-eval": eval_cli.build_parser,
        "rocket-quantize": quantize.build_parser,
        "rocket-fetch": fetch.build_parser,
        "python -m rocket_trtllm.serve.soak": soak.build_parser,
    })  # fmt: skip
    return found


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def action_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}` (positional)"
    if action.choices:
        value = ", ".join(f"`{c}`" for c in action.choices)
    elif action.nargs == 0:
        value = ""
    else:
        value = f"`{action.metavar or action.dest.upper()}`" + (" ..." if action.nargs in ("+", "*") else "")
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 and default is False else default
    if isinstance(shown, list):
        shown = " ".join(map(str, shown))
    help_text = parser._get_formatter()._expand_help(action) if action.help else ""
    row = [names, value, f"`{shown}`" if shown != "" else "", help_text]
    return "| " + " | ".join(cell(c) for c in row) + " |"


def command_section(name: str, parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=110)  # not the terminal's: the same page anywhere
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    usage = formatter.format_help().strip()
    lines = [f"### {name}", "", "```text", usage, "```", ""]
    description = (parser.description or "").strip()
    if description:
        lines += [description, ""]
    lines += ["| flag | value | default | help |", "|---|---|---|---|"]
    lines += [action_row(parser, a) for a in flags(parser)]
    return "\n".join(lines)


def lm_eval_section() -> str:
    spec = importlib.util.find_spec("rocket_trtllm.eval.lm_eval_model")
    with open(spec.origin) as f:  # read, not imported: lm-eval is an extra
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    return "\n".join(["### rocket-lm-eval", "", "```text", "rocket-lm-eval --model rocket-trtllm --model_args "
                      "pretrained=PATH[,config=YAML,...] --tasks TASKS [lm_eval's flags]", "```", "", doc,
                      "", "Its flags are lm-eval's own (`lm_eval --help`)."])  # fmt: skip


def cli_reference() -> str:
    sections = [command_section(name, build()) for name, build in commands().items()]
    return "\n\n".join([*sections, lm_eval_section()]) + "\n"


# ---- HTTP --------------------------------------------------------------------------------------------------------


def routes() -> list[tuple[str, str, str]]:
    """(method, path, what it does) of every endpoint rocket-serve answers."""
    from fastapi.routing import APIRoute

    from .serve.app import create_app

    app = create_app(None, "model")  # the routes only: no request reaches the missing engine
    out = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            for method in sorted(route.methods):
                out.append((method, route.path, first_paragraph(route.endpoint.__doc__)))
    return out


def metric_rows() -> list[tuple[str, str, str]]:
    """(name, type, help) of every /metrics series."""
    from .serve.metrics import Metrics

    text = Metrics().render(defaultdict(int))
    kinds = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    return [(line.split()[2], kinds[line.split()[2]], line.split(" ", 3)[3])
            for line in text.splitlines() if line.startswith("# HELP ")]  # fmt: skip


def body_section(cls: type[BaseModel]) -> str:
    lines = [f"#### {cls.__name__}", "", first_paragraph(cls.__doc__), "",
             "| field | type | default | description |", "|---|---|---|---|"]  # fmt: skip
    for name, field in cls.model_fields.items():
        row = [f"`{name}`", type_text(field.annotation), default_text(field), field.description or ""]
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines)


def http_reference() -> str:
    from .serve.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest

    lines = ["### Endpoints", "", "| method | path | what it does |", "|---|---|---|"]
    lines += [f"| {m} | `{p}` | {cell(d)} |" for m, p, d in routes()]
    lines += ["", "### Request bodies", ""]
    lines += [body_section(cls) + "\n" for cls in (CompletionRequest, ChatCompletionRequest, ChatMessage)]
    lines += ["### Metrics", "", "`GET /metrics`, in the Prometheus text format:", "",
              "| series | type | what it counts |", "|---|---|---|"]  # fmt: skip
    lines += [f"| `{n}` | {k} | {cell(h)} |" for n, k, h in metric_rows()]
    return "\n".join(lines) + "\n"


SECTIONS: dict[str, Callable[[], str]] = {"config": config_reference, "cli": cli_reference, "http": http_reference}


def expand(markdown: str) -> str:
    """`markdown` with each `<!-- generated: NAME -->` line replaced by that section; an unknown NAME is an error."""
    out = []
    for line in markdown.split("\n"):
        stripped = line.strip()
        if stripped.startswith("<!-- generated:") and stripped.endswith("-->"):
            name = stripped.removeprefix("<!-- generated:").removesuffix("-->").strip()
            if name not in SECTIONS:
                raise KeyError(f"no generated section {name!r}; there are {', '.join(SECTIONS)}")
            out.append(SECTIONS[name]())
        else:
            out.append(line)
    return "\n".join(out)
