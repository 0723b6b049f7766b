"""Engines depend on nothing of the gateway: `mxn engine` and outside engines can import them alone."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import mxn.engines

SCRIPT = """
import importlib, json, pkgutil, sys
import mxn.engines
import pytest

pytestmark = pytest.mark.e2e  # starts processes of its own
names = ["mxn.engines"] + [m.name for m in pkgutil.walk_packages(mxn.engines.__path__, "mxn.engines.")]
for name in names:
    importlib.import_module(name)
gateway = sorted(m for m in sys.modules if m.split(".")[:2] == ["mxn", "gateway"])
print(json.dumps({"imported": names, "gateway": gateway}))
"""


def test_importing_every_engine_module_imports_no_gateway_module() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"mxn.engines.pool", "mxn.engines.openai_compat", "mxn.engines.local.server"} <= set(seen["imported"])
    assert seen["gateway"] == []


def test_the_wire_format_imports_no_gateway_module() -> None:
    script = "import sys, mxn.wire; print([m for m in sys.modules if m.startswith('mxn.gateway')])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_engine_module_imports_the_gateway_even_inside_a_function() -> None:
    found = []
    for path in Path(mxn.engines.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found += [f"{path.name}:{node.lineno}" for n in names if n == "mxn.gateway" or n.startswith("mxn.gateway.")]
    assert found == []
