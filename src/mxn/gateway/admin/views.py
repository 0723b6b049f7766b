"""Rows as /admin shows them. Secrets (key hashes, an upstream's api_key) never leave."""

from __future__ import annotations

from typing import Any

from mxn.gateway.admin.schemas import GroupBody
from mxn.store.models import Chip, Code, Deployment, Endpoint, Group, Model, ModerationRule, User


def user_view(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "name": u.name,
        "role": u.role,
        "group": u.group,
        "quota": u.quota,
        "enabled": u.enabled,
        "created_at": u.created_at,
    }


def group_view(g: Group) -> dict[str, Any]:
    return {c: getattr(g, c) for c in GroupBody.model_fields}


def code_view(c: Code) -> dict[str, Any]:
    return {
        "id": c.id,
        "prefix": c.prefix,
        "quota": c.quota,
        "created_at": c.created_at,
        "redeemed_by": c.redeemed_by,
        "redeemed_at": c.redeemed_at,
    }


def chip_view(c: Chip) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "alias": c.alias}


def model_view(m: Model) -> dict[str, Any]:
    return {
        "name": m.name,
        "family": m.family,
        "kind": m.kind,
        "context_length": m.context_length,
        "tokenizer": m.tokenizer,
        "public": m.public,
        "defaults": m.defaults,
    }


def deployment_view(d: Deployment) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": f"{d.model}@{d.chip}",
        "model": d.model,
        "chip": d.chip,
        "moderation": d.moderation,
        "price": {"input": d.price_input, "output": d.price_output},
        "limits": {"rpm": d.rpm, "rpd": d.rpd, "tpm": d.tpm, "concurrency": d.concurrency},
        "disclosure": d.disclosure,
    }


def endpoint_view(e: Endpoint, deployment: str) -> dict[str, Any]:
    # The upstream's api_key is a secret of the operator's: never echoed back.
    return {
        "id": e.id,
        "deployment": deployment,
        "engine": e.engine,
        "url": e.url,
        "path": e.path,
        "upstream_model": e.upstream_model,
        "has_api_key": bool(e.api_key),
        "stream_format": e.stream_format,
        "state": e.state,
        "weight": e.weight,
        "priority": e.priority,
        "source": e.source,
        "health_path": e.health_path,
        "timeouts": e.timeouts,
        "max_concurrency": e.max_concurrency,
        "supports": e.supports,
        "hardware": e.hardware,
    }


def rule_set_view(r: ModerationRule, deployments: dict[int, str]) -> dict[str, Any]:
    return {
        "id": r.id,
        "deployment": deployments.get(r.deployment_id) if r.deployment_id else None,
        "source": r.source,
        "name": r.name,
        "keywords": r.keywords,
        "regexes": r.regexes,
        "classifier": r.classifier,
        "updated_at": r.updated_at,
    }
