"""GGUF files for llama.cpp: a HuggingFace model directory is converted once, and the result cached by content.

The conversion is llama.cpp's own `convert_hf_to_gguf.py`, extracted by `make engines` into
`.engines/llamacpp/convert/` and run by that engine's interpreter (torch, transformers and the converter live
there, not in mxn's environment), through `gguf_convert.py` beside this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mxn.errors import InvalidRequest, MxnError
from mxn.paths import resolve_path

# What a model directory's GGUF is made from: config, weights, tokenizer and chat template files.
CONTENT = ("*.json", "*.safetensors", "*.bin", "*.model", "*.tiktoken", "*.jinja", "merges.txt", "vocab.txt")
# The llama.cpp pre-tokenizer a model directory names in its tokenizer_config.json, for a tokenizer whose hash
# the converter does not know (a vocabulary trained here, like mxn's demo model).
PRETOKENIZER_KEY = "gguf_pretokenizer"
# "auto": bf16 from bf16 weights, f16 from anything else, so neither rounds the source. llama.cpp's CPU back end
# serves both; bf16 from float32 weights rounds them (the demo model's greedy answer then drifts from transformers').
OUTTYPE = "auto"
WRAPPER = Path(__file__).with_name("gguf_convert.py")
DIGESTS = "digests.json"  # in the cache folder: what each source file hashed to, at which size and mtime


class ConversionFailed(MxnError):
    default_code = "gguf_conversion_failed"


def ensure_gguf(source: str, cache_dir: Path, engines_dir: Path) -> str:
    """A GGUF file for `source`: a `.gguf` path as is, a HuggingFace model directory converted (or its cached
    conversion). Blocking, and minutes for a large model: call it off the event loop."""
    if source.endswith(".gguf"):
        if not resolve_path(source).is_file():
            raise InvalidRequest(f"no GGUF file at {source}", param="model")
        return source
    model = resolve_path(source)
    if not (model / "config.json").is_file():
        raise InvalidRequest(f"{source} is neither a .gguf file nor a HuggingFace model directory", param="model")
    python, converter = _converter(engines_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = model.resolve()
    # One conversion per model directory is kept: `{name}-{where}-{what}.gguf`, and a new one replaces the others
    # of the same directory (an engine still serving one keeps its open file until it stops).
    stem = f"{model.name}-{hashlib.sha256(str(model).encode()).hexdigest()[:8]}"
    out = cache_dir / f"{stem}-{_content_hash(model, converter.parent, cache_dir / DIGESTS)}.gguf"
    with _locked(out):  # replicas starting together convert once; the others wait and reuse it
        if not out.is_file():
            _convert(python, converter, model, out)
            for old in cache_dir.glob(f"{glob.escape(stem)}-*.gguf"):  # a name may hold [, * or ?
                if old != out:
                    old.unlink(missing_ok=True)
                    old.with_name(f".{old.name}.lock").unlink(missing_ok=True)
    return str(out)


def _converter(engines_dir: Path) -> tuple[Path, Path]:
    python = engines_dir / "llamacpp" / "bin" / "python"
    converter = engines_dir / "llamacpp" / "convert" / "convert_hf_to_gguf.py"
    for needed in (python, converter):
        if not needed.is_file():
            raise MxnError(
                f"llama.cpp's GGUF converter is not installed ({needed} is missing): run `make engines`",
                code="engine_not_installed",
            )
    return python, converter


def _content_hash(model: Path, converter_dir: Path, digests: Path) -> str:
    """Short hash of what the GGUF is made from, the converter's code (and ours around it) and the output type:
    a changed model or converter converts again, an unchanged one is reused.

    A file's digest is kept in `digests` by path, size and modification time, as build tools do: a launch reads
    the weights again only when they changed (hashing tens of GB took minutes per start)."""
    h = hashlib.sha256(OUTTYPE.encode())
    files = sorted({p for pattern in CONTENT for p in model.glob(pattern) if p.is_file()})
    code = [*sorted(converter_dir.rglob("*.py")), WRAPPER]
    try:
        known = json.loads(digests.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    fresh = {}
    for path in [*files, *code]:
        key, st = str(path.resolve()), path.stat()
        seen = known.get(key)
        if isinstance(seen, list) and seen[:2] == [st.st_size, st.st_mtime_ns]:
            digest = seen[2]
        else:
            digest = file_digest(path)
        fresh[key] = [st.st_size, st.st_mtime_ns, digest]
        h.update(f"{path.name}\0{digest}".encode())
    if any(known.get(k) != v for k, v in fresh.items()):
        # Entries of files gone from this model directory go; other directories' stay.
        kept = {k: v for k, v in known.items() if not k.startswith(f"{model}{os.sep}") or k in fresh}
        tmp = digests.with_name(f".{digests.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**kept, **fresh}), encoding="utf-8")
        tmp.replace(digests)
    return h.hexdigest()[:12]


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    with out.with_name(f".{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _convert(python: Path, converter: Path, model: Path, out: Path) -> None:
    """Convert into a temporary name, then rename: a killed conversion leaves no half file under `out`."""
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.gguf")
    cmd = [str(python), str(WRAPPER), str(converter), _pretokenizer(model), str(model)]
    cmd += ["--outfile", str(tmp), "--outtype", OUTTYPE]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        done = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**env, "HF_HUB_OFFLINE": "1"}
        )
        if done.returncode != 0 or not tmp.is_file():
            tail = done.stdout[-4000:]
            raise ConversionFailed(f"converting {model} to GGUF failed ({done.returncode}):\n{tail}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _pretokenizer(model: Path) -> str:
    """The pre-tokenizer the model directory names for llama.cpp, or "" (then an unknown one is an error)."""
    try:
        config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    name = config.get(PRETOKENIZER_KEY) if isinstance(config, dict) else None
    return name if isinstance(name, str) else ""


# general.file_type in a GGUF header (llama.cpp's LlamaFileType), as the names its tools use.
FILE_TYPES = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s",
    12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k",
    19: "iq2_xxs", 20: "iq2_xs", 21: "q2_k_s", 22: "iq3_xs", 23: "iq3_xxs", 24: "iq1_s", 25: "iq4_nl",
    26: "iq3_s", 27: "iq3_m", 28: "iq2_s", 29: "iq2_m", 30: "iq4_xs", 31: "iq1_m", 32: "bf16", 36: "tq1_0",
    37: "tq2_0", 38: "mxfp4_moe", 39: "nvfp4", 40: "q1_0", 41: "q2_0",
}  # fmt: skip
# GGUF metadata value types with a fixed size: their struct format.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def file_type(path: str) -> str | None:
    """The weight type a GGUF file declares (`general.file_type`: f16, bf16, q4_k_m, ...); None if it says none
    or is not a readable GGUF file."""
    try:
        with open(path, "rb") as f:
            magic, version, _tensors, count = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or version < 2:
                return None
            for _ in range(count):
                key, kind = _string(f), _read("<I", f)
                if key == "general.file_type":
                    value = _value(f, kind)
                    return FILE_TYPES.get(value) if isinstance(value, int) else None
                _value(f, kind)
    except (OSError, struct.error, ValueError):
        return None
    return None


def _read(fmt: str, f: BinaryIO) -> int:
    value: int = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    return value


def _string(f: BinaryIO) -> str:
    return f.read(_read("<Q", f)).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> object:
    """Read one metadata value; arrays (the tokenizer's tens of thousands of tokens) are skipped, not kept."""
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, n = _read("<I", f), _read("<Q", f)
        if item in _SCALARS:
            f.seek(n * struct.calcsize("<" + _SCALARS[item]), os.SEEK_CUR)
        else:
            for _ in range(n):
                _value(f, item)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")
