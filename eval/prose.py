"""Real English prose for the real-text tasks: the King James Bible as `rocket-fetch prose` writes it (one
verse a line, "Ge1:1 In the beginning ..."), or any UTF-8 text with one paragraph a line (one book)."""

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VERSE = re.compile(r"(\d?[A-Za-z]+)(\d+):(\d+) (.*)")


@dataclass
class Book:
    name: str
    paragraphs: list[str]
    chapter_starts: list[int]  # indices into paragraphs where a chapter (or the book) begins


class Corpus:
    def __init__(self, books: list[Book]) -> None:
        if not books or not any(b.paragraphs for b in books):
            raise ValueError("the prose file has no text")
        self.books = books
        self.paragraphs = [p for b in books for p in b.paragraphs]  # every book's, in order

    @classmethod
    def load(cls, path: Path) -> "Corpus":
        books: dict[str, Book] = {}
        plain: list[str] = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            m = VERSE.fullmatch(line)
            if m is None:
                plain.append(line)
                continue
            book = books.setdefault(m.group(1), Book(m.group(1), [], []))
            if m.group(3) == "1":
                book.chapter_starts.append(len(book.paragraphs))
            book.paragraphs.append(m.group(4))
        if plain:
            books[Path(path).stem] = Book(Path(path).stem, plain, [0])
        return cls(list(books.values()))

    def excerpt(self, n_chars: int, rng: random.Random) -> str:
        """About `n_chars` characters of consecutive paragraphs from a random place (running on into
        the next books), cut at a word's end."""
        flat = self.paragraphs
        i = rng.randrange(len(flat))
        parts: list[str] = []
        size = 0
        while size < n_chars:
            parts.append(flat[i % len(flat)])
            size += len(parts[-1]) + 1
            i += 1
        text = " ".join(parts)[: n_chars + 1]
        return text[: text.rfind(" ")].rstrip(".")  # whole words; the haystack puts sentence periods back

    def document(self, n_tokens: int, rng: random.Random, encode: Callable[[str], list[int]]) -> list[int]:
        """`n_tokens` token ids of one book read from the start of a random chapter (books too short for
        that many tokens from any chapter are skipped)."""
        chars = 8 * n_tokens  # no tokenizer spends more than 8 characters a token on English
        starts = [(b, s) for b in self.books for s in b.chapter_starts if _length(b, s) >= chars]
        if not starts:
            raise ValueError(f"no book of the prose has {n_tokens} tokens from a chapter start")
        book, start = rng.choice(starts)
        text, i = "", start
        ids: list[int] = []
        while len(ids) < n_tokens and i < len(book.paragraphs):
            step = book.paragraphs[i : i + 64]
            text = " ".join(filter(None, [text, *step]))
            i += len(step)
            ids = encode(text)
        if len(ids) < n_tokens:
            raise ValueError(f"{book.name} ran out before {n_tokens} tokens")
        return ids[:n_tokens]


def _length(book: Book, start: int) -> int:
    return sum(len(p) + 1 for p in book.paragraphs[start:])
