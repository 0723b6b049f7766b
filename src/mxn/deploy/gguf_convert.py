"""llama.cpp's `convert_hf_to_gguf.py`, told the pre-tokenizer when it does not recognise the tokenizer.

Run by the llamacpp engine's interpreter (`.engines/llamacpp/bin/python`), never imported by mxn:
    python gguf_convert.py CONVERTER PRETOKENIZER [converter arguments...]
CONVERTER is the extracted `convert_hf_to_gguf.py`; PRETOKENIZER is a llama.cpp pre-tokenizer name (`gpt-2`,
`qwen2`, ...) or "" for none. The converter names the pre-tokenizer from a hash of how the tokenizer encodes a
test string and refuses a hash it does not know; a model that records its pre-tokenizer (mxn's demo model does)
is converted anyway. A known hash always wins, and an unknown hash with no name keeps the converter's error.
"""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("mxn.gguf")


def main(argv: list[str]) -> None:
    converter, pretokenizer, args = Path(argv[1]).resolve(), argv[2], argv[3:]
    # What running the script directly would give it: its own folder (the `conversion` package) and gguf-py.
    sys.path[:0] = [str(converter.parent), str(converter.parent / "gguf-py")]
    if pretokenizer:
        _name_unknown_pretokenizer(pretokenizer)
    sys.argv = [str(converter), *args]
    runpy.run_path(str(converter), run_name="__main__")


def _name_unknown_pretokenizer(name: str) -> None:
    from conversion import TextModel  # the converter's own package, put on sys.path by main()

    detect = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return str(detect(self, tokenizer))
        except NotImplementedError:  # the converter's "BPE pre-tokenizer was not recognized"
            log.warning("pre-tokenizer hash unknown to the converter; using the one the model names: %r", name)
            return name

    TextModel.get_vocab_base_pre = get_vocab_base_pre


if __name__ == "__main__":
    main(sys.argv)
