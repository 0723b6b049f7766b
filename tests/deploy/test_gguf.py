"""GGUF for llama.cpp: mxn's demo model converted by llama.cpp's own converter (`make engines` installs it), the
conversion cached by content, and llama.cpp's server answering as mxn's embedded engine does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from mxn.deploy import gguf, recipes
from mxn.errors import InvalidRequest, MxnError
from tests.conftest import ROOT, Proc, free_port, start

# Runs llama.cpp's converter and server, and mxn's engine, as processes.
pytestmark = [pytest.mark.e2e, pytest.mark.engines]

ENGINES = ROOT / ".engines"
LLAMACPP_PYTHON = ENGINES / "llamacpp" / "bin" / "python"
# What a wrong pre-tokenizer splits differently: digits after a space, punctuation before letters, newlines,
# contractions, Chinese beside Latin and digits.
TEXTS = [
    "What is mxn?",
    "What is 1+1? 2048 tokens, port 8000.",
    "Use base_url http://127.0.0.1:8000/v1 and your sk- key.",
    "我想在apple工作1314151天～ 支持哪些芯片?",
    "I've been 'told he's there, 'RE you sure?\n\n  \tok",
    "<|im_start|>user\n你是谁?<|im_end|>\n",
]
PROMPTS = ["What is mxn?", "你是谁?", "How do I compare chips?"]
MAX_TOKENS = 48
# A greedy step whose two best logits are closer than this is a tie: float32 kernels that add in another order may
# pick either. The demo model is trained briefly on the machine running the tests, so it has some.
TIE = 0.05
Reference = dict[str, tuple[list[int], list[int], int]]  # prompt: (its ids, the answer's ids, how many are sure)


@pytest.fixture(scope="module")
def demo_model(demo_data_dir: Path) -> Path:
    # No skip: the engines are part of `make test`, and a missing one is a failure to see.
    assert (ENGINES / "llamacpp" / "convert" / "convert_hf_to_gguf.py").is_file(), "run `make engines`"
    return demo_data_dir / "models" / "mxn-demo"


@pytest.fixture(scope="module")
def converted(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the cache dir, the demo model's GGUF in it)."""
    cache = tmp_path_factory.mktemp("gguf-cache")
    return cache, Path(gguf.ensure_gguf(str(demo_model), cache, ENGINES))


@pytest.fixture(scope="module")
def exact(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model's GGUF in float32, for comparing tokens with transformers in float32: the demo model is
    trained on the machine that runs the tests, and where two of its logits nearly tie, the f16 file (the default)
    can pick the other greedily; only the type differs from what `converted` holds."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(gguf, "OUTTYPE", "f32")
        out = Path(gguf.ensure_gguf(str(demo_model), tmp_path_factory.mktemp("gguf-f32"), ENGINES))
    assert gguf.file_type(str(out)) == "f32"
    return out


def copy_model(model: Path, to: Path) -> Path:
    shutil.copytree(model, to)
    return to


def test_demo_model_records_its_pretokenizer(demo_model: Path) -> None:
    config = json.loads((demo_model / "tokenizer_config.json").read_text())
    assert config[gguf.PRETOKENIZER_KEY] == "qwen2"


def test_demo_model_converts_to_an_f16_gguf(converted: tuple[Path, Path]) -> None:
    cache, out = converted
    assert out.parent == cache and out.name.startswith("mxn-demo-") and out.suffix == ".gguf"
    assert gguf.file_type(str(out)) == "f16"  # float32 weights: "auto" makes f16
    assert [p.name for p in cache.glob("*.gguf")] == [out.name]  # no temporary file left beside it


def test_unchanged_model_reuses_the_cached_gguf(
    converted: tuple[Path, Path], demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, out = converted
    before = out.stat().st_mtime_ns

    def no_converter(*args: object, **kwargs: object) -> None:
        raise AssertionError("the converter ran again for an unchanged model")

    def no_reading(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again, unchanged")

    monkeypatch.setattr(gguf.subprocess, "run", no_converter)
    monkeypatch.setattr(gguf, "file_digest", no_reading)
    assert gguf.ensure_gguf(str(demo_model), cache, ENGINES) == str(out)
    assert out.stat().st_mtime_ns == before


def test_touched_weights_are_hashed_again_and_reuse_the_gguf(
    converted: tuple[Path, Path], demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _ = converted
    model = copy_model(demo_model, tmp_path / "mxn-demo")
    first = gguf.ensure_gguf(str(model), cache, ENGINES)
    hashed: list[str] = []
    digest = gguf.file_digest
    monkeypatch.setattr(gguf, "file_digest", lambda path: hashed.append(path.name) or digest(path))
    os.utime(model / "model.safetensors", ns=(time.time_ns(), time.time_ns()))
    assert gguf.ensure_gguf(str(model), cache, ENGINES) == first
    assert hashed == ["model.safetensors"]


def _nudge(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})


def test_changed_weights_convert_again_and_replace_their_old_conversion(
    converted: tuple[Path, Path], demo_model: Path, tmp_path: Path
) -> None:
    cache, out = converted
    model = copy_model(demo_model, tmp_path / "mxn-demo")
    _nudge(model)
    again = Path(gguf.ensure_gguf(str(model), cache, ENGINES))
    assert again != out and again.name.startswith("mxn-demo-") and again.is_file()
    assert out.is_file()  # another directory's conversion stays

    _nudge(model)
    third = Path(gguf.ensure_gguf(str(model), cache, ENGINES))
    assert third != again and third.is_file()
    assert not again.exists()  # this directory's old conversion went
    assert out.is_file()


def test_unknown_pretokenizer_without_a_name_keeps_the_converter_error(demo_model: Path, tmp_path: Path) -> None:
    model = copy_model(demo_model, tmp_path / "anonymous")
    config = json.loads((model / "tokenizer_config.json").read_text())
    del config[gguf.PRETOKENIZER_KEY]
    (model / "tokenizer_config.json").write_text(json.dumps(config))

    with pytest.raises(gguf.ConversionFailed, match="BPE pre-tokenizer was not recognized"):
        gguf.ensure_gguf(str(model), tmp_path / "cache", ENGINES)
    assert not list((tmp_path / "cache").glob("*.gguf"))


def test_missing_engine_says_make_engines(demo_model: Path, tmp_path: Path) -> None:
    with pytest.raises(MxnError, match="run `make engines`"):
        gguf.ensure_gguf(str(demo_model), tmp_path / "cache", tmp_path / "no-engines")


def test_a_gguf_file_is_used_as_is(converted: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = converted
    assert gguf.ensure_gguf(str(out), tmp_path, tmp_path / "no-engines") == str(out)
    assert gguf.file_type("/models/tiny.gguf") is None
    # A GGUF file that is not there cannot start: said before any engine is launched.
    with pytest.raises(InvalidRequest, match=r"no GGUF file at /models/tiny\.gguf"):
        gguf.ensure_gguf("/models/tiny.gguf", tmp_path, tmp_path / "no-engines")


def test_llamacpp_tokenizes_as_the_hf_tokenizer(converted: tuple[Path, Path], demo_model: Path) -> None:
    """What a wrong pre-tokenizer breaks: llama.cpp must split text into the ids transformers gives."""
    from transformers import AutoTokenizer

    code = (
        "import json, sys\nfrom llama_cpp import Llama\n"
        "llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
        "texts = json.loads(sys.stdin.read())\n"
        "print(json.dumps([llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]))\n"
    )
    done = subprocess.run(
        [str(LLAMACPP_PYTHON), "-c", code, str(converted[1])],
        input=json.dumps(TEXTS),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    expected = [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
    assert json.loads(done.stdout.splitlines()[-1]) == expected


@pytest.fixture(scope="module")
def reference(demo_model: Path) -> Reference:
    """Per prompt: its chat-template ids, the ids transformers generates from them greedily, in float32 on the
    CPU, as mxn's embedded engine does, and how many of those come before the first tie (`TIE`): past one, another
    correct implementation may go another way."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    eos = stop_ids(demo_model)
    out = {}
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        done = model.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=MAX_TOKENS,
            eos_token_id=eos,
            output_scores=True,
            return_dict_in_generate=True,
        )
        answer = done.sequences[0][len(ids) :].tolist()
        margins = [float(top[0] - top[1]) for top in (torch.topk(step[0], 2).values for step in done.scores)]
        sure = next((i for i, m in enumerate(margins) if m < TIE), len(margins))
        answer = answer[:-1] if answer[-1] in eos else answer
        out[prompt] = (list(ids), answer, min(sure, len(answer)) if sure < len(margins) else len(answer))
    return out


def same_until_a_tie(got: list[int], expected: list[int], sure: int) -> bool:
    """The same ids, or, when the reference met a tie, the same ids up to it."""
    return got == expected if sure == len(expected) else got[:sure] == expected[:sure]


def stop_ids(model: Path) -> list[int]:
    """The token ids the model's generation stops at."""
    eos = json.loads((model / "generation_config.json").read_text())["eos_token_id"]
    return eos if isinstance(eos, list) else [eos]


def in_llamacpp(code: str, gguf_file: Path, payload: object) -> object:
    """Run `code` in the llamacpp engine's interpreter with the GGUF path in argv and `payload` as JSON on stdin;
    the JSON it prints last is the answer."""
    done = subprocess.run(
        [str(LLAMACPP_PYTHON), "-c", code, str(gguf_file)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_llamacpp_generates_the_tokens_transformers_generates(
    exact: Path, demo_model: Path, reference: Reference
) -> None:
    """The GGUF's weights and vocabulary compute what the HF model computes: the same greedy tokens."""
    code = (
        "import json, sys\nfrom llama_cpp import Llama\n"
        "llm = Llama(model_path=sys.argv[1], n_ctx=2048, verbose=False)\n"
        "payload = json.loads(sys.stdin.read())\nanswers = []\n"
        "for ids in payload['prompts']:\n"
        "    answer = []\n"
        "    for t in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):\n"
        "        if t in payload['eos'] or len(answer) == payload['max']:\n"
        "            break\n"
        "        answer.append(t)\n"
        "    answers.append(answer)\n"
        "print(json.dumps(answers))\n"
    )
    prompts = [reference[p][0] for p in PROMPTS]
    answers = in_llamacpp(code, exact, {"prompts": prompts, "eos": stop_ids(demo_model), "max": MAX_TOKENS})
    assert isinstance(answers, list)
    for prompt, answer in zip(PROMPTS, answers, strict=True):
        _ids, expected, sure = reference[prompt]
        assert sure >= 4, f"a tie {sure} tokens into {prompt!r}: too soon to compare anything"
        assert same_until_a_tie(answer, expected, sure), (prompt, sure, answer, expected)


def serve(launch: recipes.Launch, log: Path) -> Iterator[Proc]:
    """An engine server started from a recipe's launch; `start` makes it die with this test run (PR_SET_PDEATHSIG),
    even a killed one."""
    proc = start(launch.argv, launch.health_url, log, env=launch.env, timeout=120)
    proc.url = launch.base_url
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def llamacpp_server(exact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """llama-cpp-python's server as mxn's `llamacpp` recipe starts it (its launcher included), on the float32 GGUF."""
    launch = recipes.render(
        "llamacpp", chip="cpu", model=str(exact), name="mxn-demo", port=free_port(), engines_dir=ENGINES
    )
    yield from serve(launch, tmp_path_factory.mktemp("llamacpp") / "server.log")


@pytest.fixture(scope="module")
def embedded_server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    launch = recipes.render("mxn", chip="cpu", model=str(demo_model), name="mxn-demo", port=free_port())
    yield from serve(launch, tmp_path_factory.mktemp("embedded") / "engine.log")


def greedy(proc: Proc, prompt: str) -> str:
    client = OpenAI(base_url=proc.url, api_key="none", max_retries=0, timeout=120)
    r = client.chat.completions.create(
        model="mxn-demo",
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        # llama-cpp-python's server penalises repeats (1.1) unless told otherwise; greedy means none.
        extra_body={"repeat_penalty": 1.0},
    )
    return r.choices[0].message.content or ""


@pytest.mark.parametrize("prompt", PROMPTS)
def test_llamacpp_server_answers_as_the_embedded_engine(
    llamacpp_server: Proc,
    embedded_server: Proc,
    converted: tuple[Path, Path],
    demo_model: Path,
    reference: Reference,
    prompt: str,
) -> None:
    """Both real servers, asked the same through the OpenAI SDK, give the same tokens and so the same text. The
    demo's vocabulary has token pieces longer than 32 bytes (long merged Chinese phrases), which llama-cpp-python
    0.3.36 leaves out of its text (abetlen/llama-cpp-python#2362): the recipe's launcher puts them back."""
    from transformers import AutoTokenizer

    _ids, tokens, sure = reference[prompt]
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    embedded = greedy(embedded_server, prompt)
    assert embedded == tokenizer.decode(tokens, skip_special_tokens=True)
    answer = greedy(llamacpp_server, prompt)
    assert answer.strip(), llamacpp_server.output()[-2000:]
    if sure == len(tokens):
        assert answer == embedded
    else:  # up to the reference's first tie (a character cut in two there is left out)
        prefix = str(tokenizer.decode(tokens[:sure], skip_special_tokens=True))
        assert answer.startswith(prefix.rstrip("\ufffd"))
