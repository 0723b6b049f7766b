"""Extract the response schemas the gateway must honour from OpenAI's published OpenAPI document.

Usage (the document lives in github.com/openai/openai-openapi; any local clone or bare git dir will do)::

    python tests/data/extract_openai_schemas.py GIT_DIR [--rev HEAD] [--path openapi.yaml]

Writes `tests/data/openai_schemas.json`: the ROOTS below plus every component they reference, transitively,
verbatim (no rewriting: the test does its own `nullable` handling), and where they came from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "Error",
    "CompletionUsage",
    "ChatCompletionResponseMessage",
    "ChatCompletionStreamResponseDelta",
    "Embedding",
    # the Responses API
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
]
PREFIX = "#/components/schemas/"
OUT = Path(__file__).with_name("openai_schemas.json")


def refs(node: Any) -> list[str]:
    """Every `$ref` anywhere under `node`."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def reachable(schemas: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in schemas:
            raise SystemExit(f"components.schemas.{name} not in the document")
        seen[name] = schemas[name]
        for ref in refs(schemas[name]):
            if not ref.startswith(PREFIX):
                raise SystemExit(f"{name}: unsupported $ref {ref!r} (only {PREFIX}* is followed)")
            todo.append(ref.removeprefix(PREFIX))
    return {k: seen[k] for k in sorted(seen)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("git_dir", help="a clone or bare git dir of github.com/openai/openai-openapi")
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--path", default="openapi.yaml")
    args = ap.parse_args()

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "--git-dir", args.git_dir, *cmd], check=True, capture_output=True, text=True
        ).stdout

    commit = git("rev-parse", f"{args.rev}^{{commit}}").strip()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(git("show", f"{commit}:{args.path}"), Loader=loader)  # a safe loader
    schemas = reachable(doc["components"]["schemas"], ROOTS)
    out = {
        "source": {
            "repo": "github.com/openai/openai-openapi",
            "commit": commit,
            "path": args.path,
            "openapi": doc["openapi"],
            "info_version": doc["info"]["version"],
            "roots": ROOTS,
        },
        "components": {"schemas": schemas},
    }
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False, sort_keys=False) + "\n")
    print(f"{len(schemas)} schemas from {commit}:{args.path} -> {OUT}")


if __name__ == "__main__":
    main()
