"""Read a JSON request body within size and depth limits (`mxn.wire.read_json`), and validate it into a protocol
model."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mxn.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("mxn.protocol")


class UnknownFields:
    """The unknown request fields an app has logged: each name once, so that typos can be found without a line
    per request. At most `limit` names are kept, so that made-up names cannot grow it without end."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.full = False

    def note(self, names: Iterable[str]) -> None:
        for name in names:
            name = name[:64]
            if name in self.seen or self.full:
                continue
            if len(self.seen) >= self.limit:
                self.full = True
                log.info("more than %d distinct unknown request fields; no more are logged", self.limit)
                continue
            self.seen.add(name)
            log.info("forwarding unknown request field %r", name)


def validate(model: type[M], data: dict[str, Any], unknown: UnknownFields | None = None) -> M:
    """`data` as a `model`; unknown fields that the model keeps (to forward them) are noted in `unknown`."""
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc)
    if parsed.model_extra and unknown is not None:
        unknown.note(parsed.model_extra)
    return parsed


def validation_error(exc: ValidationError) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    param = ".".join(loc) or None
    return InvalidRequest(f"{param}: {err['msg']}" if param else err["msg"], param=param)


def _is_union_tag(part: object) -> bool:
    # pydantic names union members in error locations ('function-after[...]', 'str', 'list[str]').
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part)
