"""How catalogue objects look on the wire: OpenAI model objects and GenStudio list entries."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mxn.catalog.registry import Catalog, Cell, ModelInfo

StateOf = Callable[[Cell], str]


def model_object(
    model: ModelInfo, created: int, cell: Cell | None = None, state_of: StateOf | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": cell.name if cell else model.name,
        "object": "model",
        "created": created,
        "owned_by": "mxn",
        "kind": model.kind,
        "context_length": model.context_length,
    }
    if cell is not None:
        data.update(
            chip=cell.chip.id,
            chip_name=cell.chip.display,
            state=state_of(cell) if state_of else cell.state,
            root=model.name,
            price={"input": cell.price_input, "output": cell.price_output},
            hardware=cell.disclosure,
        )
    return data


def model_list(catalog: Catalog, created: int, *, include_private: bool, state_of: StateOf) -> list[dict[str, Any]]:
    out = []
    for model in catalog.models.values():
        if not (model.public or include_private):
            continue
        cells = catalog.cells_of(model.name)
        if not cells:
            continue
        out.append(model_object(model, created))
        out.extend(model_object(model, created, c, state_of) for c in cells)
    return out


def genstudio_entry(model: ModelInfo, cells: list[Cell], state_of: StateOf) -> dict[str, Any]:
    return {
        "model_name": model.name,
        "family": model.family,
        "kind": model.kind,
        "context_length": model.context_length,
        "public": model.public,
        "tag_list": [
            {
                "tag_type": "gpu",
                "tag_name": c.chip.display,
                # A JSON string inside JSON, spaced as GenStudio sends it: '{"chipType": "nvidia"}'.
                "tag_extend_info": json.dumps({"chipType": c.chip.id}),
                "state": state_of(c),
            }
            for c in cells
        ],
    }
