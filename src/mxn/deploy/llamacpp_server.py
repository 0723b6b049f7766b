"""llama-cpp-python's OpenAI server, run by the llama.cpp engine's own interpreter (it imports nothing of mxn).

One fix first: its detokenizer reads every token into a 32-byte buffer and silently drops a token whose text is
longer (llama.cpp answers with the size it needs, as a negative number), so answers lose words: CJK pieces of 11+
characters are such tokens (abetlen/llama-cpp-python#2362, unfixed in 0.3.36). This one grows the buffer instead.
"""

from __future__ import annotations

import ctypes
import runpy

import llama_cpp
from llama_cpp import _internals


def _detokenize(self: _internals.LlamaModel, tokens: list[int], special: bool = False) -> bytes:
    output = bytearray()
    size = 64
    buffer = (ctypes.c_char * size)()
    for token in tokens:
        n = llama_cpp.llama_token_to_piece(self.vocab, llama_cpp.llama_token(token), buffer, size, 0, special)
        if n < 0:  # too small: -n is the size this piece needs
            size = -n
            buffer = (ctypes.c_char * size)()
            n = llama_cpp.llama_token_to_piece(self.vocab, llama_cpp.llama_token(token), buffer, size, 0, special)
        output += buffer.raw[:n]
    # As the original: a leading space after a beginning-of-sentence token is the tokenizer's, not the text's.
    if tokens and tokens[0] == self.token_bos() and output[:1] == b" ":
        return bytes(output[1:])
    return bytes(output)


_internals.LlamaModel.detokenize = _detokenize  # type: ignore[method-assign]

if __name__ == "__main__":
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
