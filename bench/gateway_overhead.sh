#!/bin/sh
# What the gateway adds over a direct call, against nginx and LiteLLM: see bench/gateway_overhead.py.
# Usage: bench/gateway_overhead.sh [--duration 10] [--concurrency 32,128] [--only direct,mxn-sqlite,...]
set -e
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/gateway_overhead.py "$@"
