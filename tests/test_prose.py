import json
import math
import random

import pytest
from rocket_trtllm.eval.cli import main
from rocket_trtllm.eval.perplexity import make_documents, perplexity
from rocket_trtllm.eval.prose import Corpus
from rocket_trtllm.eval.tasks import make_conversations, make_samples

VERSES = "\n".join(
    f"{book}{chapter}:{verse} In chapter {chapter} of {book} verse {verse} said the sower of seeds. "
    f"And {word} went forth into the field."
    for book in ("Ge", "Exo", "1Sm")
    for chapter in (1, 2, 3)
    for verse in range(1, 40)
    for word in [random.Random(f"{book}{chapter}{verse}").choice(["Abel", "Ruth", "Jonah", "Miriam"])]
)


@pytest.fixture
def small_prose(tmp_path):
    path = tmp_path / "verses.txt"
    path.write_text(VERSES + "\n")
    return path


def test_corpus_reads_books_chapters_and_plain_text(small_prose, tmp_path):
    corpus = Corpus.load(small_prose)
    assert [b.name for b in corpus.books] == ["Ge", "Exo", "1Sm"]
    assert [len(b.paragraphs) for b in corpus.books] == [117] * 3 and corpus.books[0].chapter_starts == [0, 39, 78]
    plain = tmp_path / "plain.txt"
    plain.write_text("First paragraph. It is short.\n\nSecond paragraph.\n")
    assert Corpus.load(plain).books[0].paragraphs == ["First paragraph. It is short.", "Second paragraph."]


def test_kjv_is_the_whole_bible(kjv):
    corpus = Corpus.load(kjv)
    assert len(corpus.books) == 66 and corpus.books[0].paragraphs[0].startswith("In the beginning God created")
    assert sum(len(b.chapter_starts) for b in corpus.books) == 1189


def test_prose_samples_are_deterministic_sized_and_hide_the_key(kjv):
    corpus = Corpus.load(kjv)
    a = make_samples("passkey", 2000, 4, seed=3, prose=corpus)
    assert [s.prompt for s in a] == [s.prompt for s in make_samples("passkey", 2000, 4, seed=3, prose=corpus)]
    assert [s.prompt for s in a] != [s.prompt for s in make_samples("passkey", 2000, 4, seed=4, prose=corpus)]
    for s in a:
        assert abs(len(s.prompt) - 2000) <= 40  # within 2% (`len` counts characters here)
        assert s.prompt.count(s.answers[0]) == 2 and ".." not in s.prompt
        assert s.prompt.endswith("Answer: The pass key is") and s.score(f" {s.answers[0]}.") == 1.0
    filler = make_samples("niah_single", 2000, 2, seed=3)
    in_prose = make_samples("niah_single", 2000, 2, seed=3, prose=corpus)
    assert [s.answers for s in filler] == [s.answers for s in in_prose]
    assert "The grass is green" in filler[0].prompt and "The grass is green" not in in_prose[0].prompt


def test_passkey_needs_prose():
    with pytest.raises(ValueError, match="rocket-fetch prose"):
        make_samples("passkey", 500, 1, 0)


def test_chat_prompt_puts_the_cue_after_the_assistant_turn(small_prose):
    class Template:
        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize and len(messages) == 1
            return f"<user>{messages[0]['content']}</user><assistant>"

    sample = make_samples("passkey", 800, 1, 0, prose=Corpus.load(small_prose))[0]
    chat = sample.chat_prompt(Template())
    assert chat.endswith("What is the pass key?</user><assistant>The pass key is") and "Answer:" not in chat


def test_documents_are_chapter_reads_of_exact_length(small_prose):
    corpus = Corpus.load(small_prose)
    encode = str.split  # any tokenizer: here one token a word
    docs = make_documents(corpus, 200, 3, seed=0, encode=encode, scored=50)
    assert docs == make_documents(corpus, 200, 3, seed=0, encode=encode, scored=50)
    for context, continuation in docs:
        assert len(context) == 150 and len(continuation) == 50
        assert context[:2] == ["In", "chapter"] and context[3] == "of" and context[5:7] == ["verse", "1"]
    with pytest.raises(ValueError, match="no book"):
        make_documents(corpus, 100_000, 1, 0, encode, 10)


def test_perplexity_is_exp_of_mean_negative_log_likelihood():
    assert perplexity([-2.0, -4.0], 3) == pytest.approx(math.exp(2.0))


def test_rocket_eval_scores_passkey_and_perplexity_with_a_covering_budget_equal_to_full(
    llama_dir, small_prose, tmp_path
):
    out = tmp_path / "real.json"
    md = tmp_path / "real.md"
    main([str(llama_dir), "passkey", "doc_ppl", "niah_single", "multiturn", "--haystack", "prose", "--prose",
          str(small_prose), "--turns", "2", "--lengths", "400", "--samples", "2", "--max-tokens", "3", "--ppl-tokens",
          "8", "--sweep",
          "--algorithms", "full", "rocket", "--budgets", "512", "--json", str(out), "--markdown", str(md),
          "--prompt-ratio", "2"])  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    ppl = {r["algorithm"]: r["perplexity"] for r in rows if r["task"] == "doc_ppl"}
    assert set(ppl) == {"full", "rocket"} and ppl["full"] > 1.0
    assert ppl["rocket"] == pytest.approx(ppl["full"], rel=1e-5)  # nothing evicted, every page selected
    tasks = {r["task"] for r in rows if "accuracy" in r}
    assert tasks == {"passkey", "niah_single@prose", "multiturn@prose_t1", "multiturn@prose_t2"}
    assert "| doc_ppl 400 | mean ratio to full |" in md.read_text() and "(1.000)" in md.read_text()


def test_conversations_in_prose_cue_each_answer(small_prose):
    (conv,) = make_conversations(1500, 1, seed=0, turns=3, prose=Corpus.load(small_prose))
    key = conv.opening.rsplit("for ", 1)[1].removesuffix(" is")
    assert conv.opening.endswith(f"?\nAnswer: The special magic number for {key} is")
    assert all(f.endswith(" is") and "Answer: The special magic number for" in f for f in conv.follow_ups)
    assert "said the sower of seeds" in conv.opening  # the haystack is the prose
