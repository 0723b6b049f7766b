"""Offline token counting for usage accounting, limits and pricing.

Every tokenizer here loads from files that ship with the package or its pinned dependencies, because
the gateway must count tokens on hosts without internet access: ``tiktoken.get_encoding()`` would try
to download rank files and fail there.

- ``tiktoken:gpt2|r50k_base|p50k_base|p50k_edit|cl100k_base|o200k_base`` (also accepted bare):
  ``tiktoken.Encoding`` objects built directly from local rank files; each file's sha256 is checked
  against the ``expected_hash`` tiktoken itself uses, so a corrupt or different file fails loudly.
- ``qwen`` / ``qwen2`` / ``qwen1.5``: the Qwen rank file shipped in ``dashscope``, with Qwen's pattern
  and special tokens; chat requests are counted by rendering Qwen's ChatML template.
- A local path: a directory with ``tokenizer.json`` (needs the optional ``tokenizers`` package) or a
  ``*.tiktoken`` file (or a directory holding exactly one).

Anything else falls back to ``tiktoken:cl100k_base`` and says so in ``Tokenizer.fallback_note``.

Modules: ``ranks`` (the rank files), ``encodings`` (tiktoken encodings built from them), ``tokenizer``
(counting text and chat requests), ``resolve`` (from a spec to a tokenizer).
"""

from __future__ import annotations

from mxn.tokens.resolve import DEFAULT_ENCODING, get_tokenizer, known_encodings
from mxn.tokens.tokenizer import Tokenizer

__all__ = ["DEFAULT_ENCODING", "Tokenizer", "get_tokenizer", "known_encodings"]
