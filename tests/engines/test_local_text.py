"""Incremental detokenisation and stop strings, on a real byte-level tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxn.engines.local.text import Detokenizer, StopMatcher

TEXTS = ["人生的意义在于修身、齐家、治国、平天下。", "emoji 🚀🧪 and Ü", "mixed 中文 and English, 数字 123"]


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # A tiny vocabulary: most Chinese characters and emoji stay split into several byte tokens.
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(["hello world"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_never_splits_a_character(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text)  # multi-byte characters really are split across tokens
    detok = Detokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_spanning_chunks_is_cut_and_never_sent() -> None:
    m = StopMatcher(["STOP"])
    sent = [m.feed(x) for x in ["hello S", "T", "O", "P and more"]]
    assert "".join(sent) == "hello " and m.hit
    assert sent[0] == "hello "  # "S" was held back: it might begin the stop string


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("ST") == "" and m.feed("AR") == "STAR" and not m.hit
    assert m.feed("S", final=True) == "S"


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="ab中c", min_size=0, max_size=30),
    st.lists(st.text(alphabet="ab中c", min_size=1, max_size=3), min_size=0, max_size=3),
    st.lists(st.integers(1, 5), min_size=1, max_size=10),
)
def test_stop_matcher_equals_cutting_where_generation_would_stop(text: str, stops: list[str], sizes: list[int]) -> None:
    """Generation stops after the first chunk that completes a stop string; the text ends where it starts."""
    m = StopMatcher(stops)
    out, ends, i, k = [], [], 0, 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        out.append(m.feed(text[i : i + n]))
        i, k = i + n, k + 1
        ends.append(min(i, len(text)))
    out.append(m.feed("", final=True))
    expected = text
    for end in ends:  # the oracle: whole-text search at each chunk boundary
        starts = [text[:end].find(s) for s in stops if s in text[:end]]
        if starts:
            expected = text[: min(starts)]
            break
    assert "".join(out) == expected
