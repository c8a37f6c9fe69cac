"""MkDocs hook: the reference pages' generated sections (`<!-- generated: NAME -->`, rocket_trtllm.docgen)."""

from typing import Any

from rocket_trtllm.docgen import expand


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand(markdown)
