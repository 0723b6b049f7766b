"""Requests of the GenStudio-only MaaS routes; unknown fields are refused here."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictStr


class TokenCountRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: StrictStr | None = None
    chip: StrictStr | None = None
    prompt: StrictStr


class ModelDetailsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: StrictStr | None = None
    chiptype: StrictStr | None = None
