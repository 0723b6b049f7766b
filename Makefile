# The two commands: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
CATALOG ?=
# CPU build by default; on a GPU machine: make serve TORCH=torch (or a CUDA/ROCm wheel of your choice).
TORCH  ?= torch==2.13.0

.PHONY: serve test lint demo clean system-deps bench

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

# What the tests drive besides Python: Debian's chromium for the console (with CJK fonts for the Chinese
# pages), and nginx as the load balancer of compose.yaml.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-deps:
	@command -v chromium >/dev/null && command -v nginx >/dev/null && fc-list :lang=zh | grep -q . || \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium fonts-noto-cjk nginx-light; }

test: lint system-deps
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
