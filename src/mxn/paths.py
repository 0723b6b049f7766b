"""Paths in the catalogue: a directory, or `package:<module>/<subdir>` for files a Python package ships."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

PACKAGE_PREFIX = "package:"


def resolve_path(path: str) -> Path:
    if path.startswith(PACKAGE_PREFIX):
        module, _, sub = path.removeprefix(PACKAGE_PREFIX).partition("/")
        return Path(str(importlib.resources.files(module))) / sub
    return Path(path).expanduser()
