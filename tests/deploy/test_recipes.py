"""Launch recipes render to the command, environment and URLs each engine needs, per chip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mxn.deploy import recipes
from mxn.errors import InvalidRequest


def test_vllm_on_two_nvidia_devices(tmp_path: Path) -> None:
    launch = recipes.render(
        "vllm", chip="nvidia", model="Qwen/Qwen2-7B", name="qwen2-7b", port=9001, devices=[2, 3], engines_dir=tmp_path
    )
    # No venv of its own under the engines dir: the `python3` on PATH (an image with vLLM installed).
    assert launch.argv[:5] == ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "Qwen/Qwen2-7B"]
    assert launch.argv[launch.argv.index("--dtype") + 1] == "auto"
    assert launch.argv[launch.argv.index("--tensor-parallel-size") + 1] == "2"
    assert launch.argv[launch.argv.index("--served-model-name") + 1] == "qwen2-7b"
    assert launch.argv[launch.argv.index("--gpu-memory-utilization") + 1] == "0.9"
    assert launch.env == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert launch.base_url == "http://127.0.0.1:9001/v1"
    assert launch.health_url == "http://127.0.0.1:9001/health"
    assert launch.upstream_model == "qwen2-7b"


@pytest.mark.parametrize(
    ("engine", "chip", "variable"),
    [
        ("vllm", "ascend", "ASCEND_RT_VISIBLE_DEVICES"),
        ("sglang", "amd", "HIP_VISIBLE_DEVICES"),
        ("llamacpp", "moorethreads", "MUSA_VISIBLE_DEVICES"),
    ],
)
def test_each_chip_gets_its_visibility_variable(engine: str, chip: str, variable: str) -> None:
    launch = recipes.render(engine, chip=chip, model="m", name="m", port=1, devices=[1])
    assert launch.env == {variable: "1"}


def test_sglang_memory_fraction_and_tp() -> None:
    launch = recipes.render(
        "sglang", chip="nvidia", model="m", name="n", port=1, devices=[0, 1, 2, 3], memory_fraction=0.8
    )
    assert launch.argv[0] == "python3"
    assert launch.argv[launch.argv.index("--tp") + 1] == "4"
    assert launch.argv[launch.argv.index("--mem-fraction-static") + 1] == "0.8"


def test_ollama_serves_on_its_host_variable_and_names_the_model() -> None:
    launch = recipes.render("ollama", chip="cpu", model="qwen2:7b", name="qwen2-7b", port=11500)
    assert launch.argv == ["ollama", "serve"]
    assert launch.env == {"OLLAMA_HOST": "127.0.0.1:11500"}
    assert launch.health_url.endswith("/api/version")
    assert launch.upstream_model == "qwen2:7b"


def test_embedded_engine_on_cpu_has_no_visibility_variable() -> None:
    launch = recipes.render("mxn", chip="cpu", model="/m/demo", name="demo", port=7000)
    assert launch.argv[:4] == [sys.executable, "-m", "mxn", "engine"]
    assert launch.argv[launch.argv.index("--device") + 1] == "cpu"
    assert launch.env == {}


def test_engines_run_from_their_own_venv_with_cpu_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = tmp_path / "vllm" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    launch = recipes.render("vllm", chip="cpu", model="/m", name="m", port=1, context_length=2048, engines_dir=tmp_path)
    assert launch.argv[0] == str(python) and launch.python == str(python)
    assert launch.argv[launch.argv.index("--dtype") + 1] == "bfloat16" and launch.dtype == "bfloat16"
    assert launch.argv[launch.argv.index("--max-model-len") + 1] == "2048"
    assert launch.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert launch.version.url == "/version" and "tools" in (recipes.load().engines["vllm"].supports or [])
    # The operator's own setting wins over the recipe's default.
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    assert recipes.render("vllm", chip="cpu", model="/m", name="m", port=1, engines_dir=tmp_path).env == {}


def test_llamacpp_serves_a_gguf_file_it_has_converted(tmp_path: Path) -> None:
    book = recipes.load()
    assert book.engines["llamacpp"].prepare == "gguf"
    launch = recipes.render("llamacpp", chip="cpu", model="/c/m.gguf", name="m", port=5, engines_dir=tmp_path)
    assert launch.argv[1].endswith("/mxn/deploy/llamacpp_server.py") and launch.argv[2:4] == ["--model", "/c/m.gguf"]
    assert launch.argv[launch.argv.index("--model_alias") + 1] == "m"
    assert launch.version.package == "llama-cpp-python"


def test_unknown_engine_and_wrong_chip_say_what_exists() -> None:
    with pytest.raises(InvalidRequest, match="known: llamacpp, mxn, ollama, sglang, vllm"):
        recipes.check("tgi", "nvidia")
    with pytest.raises(InvalidRequest, match="does not run on chip 'biren'"):
        recipes.check("mxn", "biren")


def test_every_recipe_chip_has_a_chip_rule() -> None:
    book = recipes.load()
    for name, recipe in book.engines.items():
        assert set(recipe.chips) <= set(book.chips), name
