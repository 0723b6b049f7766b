"""/admin: the operator's API (MXN_ADMIN_KEY or an admin user's key). It mirrors the CLI."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from mxn import alerts, audit
from mxn.accounts import codes
from mxn.accounts import service as accounts
from mxn.accounts.passwords import hash_password
from mxn.catalog.apply import apply_catalog, endpoint_columns, rule_columns
from mxn.catalog.loader import CatalogError, parse_catalog
from mxn.catalog.schema import (
    CatalogFile,
    CellLimits,
    ChipSpec,
    ClassifierSpec,
    DeploymentSpec,
    EndpointSpec,
    ModelSpec,
    ModerationSpec,
    Price,
    Timeouts,
    compiling,
)
from mxn.errors import Conflict, InvalidRequest, NotFound
from mxn.gateway.auth import admin_principal, held_balances_back
from mxn.gateway.body import validate
from mxn.gateway.openapi import request_body
from mxn.gateway.responses import json_response
from mxn.gateway.state import AppState
from mxn.gateway.usage_views import parse_since, usage_response, usage_rows
from mxn.store.models import ApiKey, Chip, Code, Deployment, Endpoint, Group, Model, ModerationRule, User

router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(admin_principal), Depends(held_balances_back)]
)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(Body):
    name: str
    password: str | None = Field(default=None, min_length=8)
    admin: bool = False
    group: str | None = None
    quota: int | None = Field(default=None, ge=0)


class UserPatch(Body):
    password: str | None = Field(default=None, min_length=8)
    enabled: bool | None = None
    group: str | None = None
    quota: int | None = Field(default=None, ge=0)
    role: str | None = Field(default=None, pattern="^(admin|user)$")


class KeyCreate(Body):
    user: str
    name: str = Field(default="", max_length=64)
    models: list[str] | None = None
    chips: list[str] | None = None
    expires: str | None = None
    ips: list[str] | None = None
    rpm: int | None = Field(default=None, ge=0)
    rpd: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    concurrency: int | None = Field(default=None, ge=0)
    quota: int | None = Field(default=None, ge=0)


class KeyPatch(Body):
    name: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    models: list[str] | None = None
    chips: list[str] | None = None
    rpm: int | None = Field(default=None, ge=0)
    rpd: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    concurrency: int | None = Field(default=None, ge=0)
    quota: int | None = Field(default=None, ge=0)


class ChipPatch(Body):
    name: str | None = None
    alias: str | None = None


class ModelPatch(Body):
    context_length: int | None = Field(default=None, ge=1)
    tokenizer: str | None = None
    kind: str | None = Field(default=None, pattern="^(chat|completion|embedding)$")
    family: str | None = None
    public: bool | None = None
    defaults: dict[str, Any] | None = None


class DeploymentPatch(Body):
    price: Price | None = None
    limits: CellLimits | None = None
    disclosure: dict[str, Any] | None = None
    moderation: bool | None = None
    # Turning moderation off must be confirmed in the same request (SPEC §4).
    confirm: bool = False


class EndpointCreate(EndpointSpec):
    deployment: str


class EndpointPatch(Body):
    url: str | None = None
    upstream_model: str | None = None
    api_key: str | None = None
    stream_format: str | None = Field(default=None, pattern="^(sse|jsonl)$")
    weight: int | None = Field(default=None, ge=0, le=1000)
    priority: int | None = None
    state: str | None = Field(default=None, pattern="^(running|unhealthy|stopped|deploying)$")
    health_path: str | None = None
    timeouts: Timeouts | None = None
    max_concurrency: int | None = Field(default=None, ge=1)
    supports: list[str] | None = None
    hardware: dict[str, Any] | None = None


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.mxn
    return state


async def _get(s: AsyncSession, table: type[Any], ident: Any, what: str) -> Any:
    row = await s.get(table, ident)
    if row is None:
        raise NotFound(f"no {what} '{ident}'", code=f"{what}_not_found")
    return row


def _patch(row: object, body: BaseModel) -> None:
    for name, value in body.model_dump(exclude_unset=True).items():
        setattr(row, name, value)


async def _commit(request: Request, s: AsyncSession, catalog: bool = True, action: str | None = None) -> None:
    """Commit an admin change together with its audit record."""
    await _audit(request, s, action)
    try:
        await s.commit()
    except IntegrityError:
        await s.rollback()
        raise Conflict("that would clash with an existing object or leave a dangling reference")
    if catalog:
        await _state(request).reload_catalog()


async def _audit(request: Request, s: AsyncSession, action: str | None = None) -> None:
    route = request.scope.get("route")
    name = getattr(route, "name", None) or request.method
    target = ",".join(f"{k}={v}" for k, v in request.path_params.items())
    body = await request.body()
    details: Any = None
    if body:
        try:
            details = audit.redact(orjson.loads(body)) if len(body) <= audit.MAX_DETAILS else {"bytes": len(body)}
        except orjson.JSONDecodeError:
            details = {"bytes": len(body)}
    audit.from_request(s, request, action or name.replace(" ", "_"), target, details)


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


# --- users ---


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, request: Request) -> Response:
    async with _state(request).sessions() as s:
        user = await accounts.create_user(
            s, body.name, body.password, admin=body.admin, group=body.group, quota=body.quota
        )
        await _commit(request, s, catalog=False)
        return json_response(user_view(user), 201)


@router.patch("/users/{user_id}")
async def patch_user(user_id: int, body: UserPatch, request: Request) -> Response:
    async with _state(request).sessions() as s:
        user = await _get(s, User, user_id, "user")
        changes = body.model_dump(exclude_unset=True)
        if "password" in changes:
            user.password_hash = hash_password(changes.pop("password"))
        for name, value in changes.items():
            setattr(user, name, value)
        await _commit(request, s, catalog=False)
        return json_response(user_view(user))


# --- keys ---
@router.get("/keys")
async def list_keys(request: Request, user: str | None = None) -> Response:
    async with _state(request).sessions() as s:
        q = select(ApiKey, User.name).join(User, User.id == ApiKey.user_id).order_by(ApiKey.id)
        if user:
            q = q.where(User.name == user)
        return json_response({"data": [accounts.key_view(k, n) for k, n in (await s.execute(q)).all()]})


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request) -> Response:
    state = _state(request)
    async with state.sessions() as s:
        user = await accounts.user_by_name(s, body.user)
        limits = body.model_dump(include={"rpm", "rpd", "tpm", "concurrency", "quota"})
        row, key = await accounts.create_key(
            s, state.secret, user, **body.model_dump(include=accounts.KEY_FIELDS), limits=limits
        )
        await _commit(request, s, catalog=False)
        return json_response({**accounts.key_view(row, user.name), "key": key}, 201)


@router.patch("/keys/{key_id}")
async def patch_key(key_id: int, body: KeyPatch, request: Request) -> Response:
    async with _state(request).sessions() as s:
        row = await _get(s, ApiKey, key_id, "key")
        _patch(row, body)
        await _commit(request, s, catalog=False)
        return json_response(accounts.key_view(row))


@router.post("/keys/{key_id}/rotate")
async def rotate_key(key_id: int, request: Request) -> Response:
    state = _state(request)
    async with state.sessions() as s:
        row = await _get(s, ApiKey, key_id, "key")
        key = await accounts.rotate_key(s, state.secret, row)
        await _commit(request, s, catalog=False)
        return json_response({**accounts.key_view(row), "key": key})


# --- catalogue: chips, models, deployments, endpoints, and whole files ---
@router.post("/catalog", openapi_extra=request_body(CatalogFile, "application/yaml"))
async def apply_catalog_file(request: Request) -> Response:
    """Apply a catalogue YAML document (the request body), exactly as `mxn serve --catalog` does."""
    state = _state(request)
    text = (await request.body()).decode("utf-8", errors="replace")
    try:
        spec = parse_catalog(text, "request body")
    except CatalogError as exc:
        raise InvalidRequest(str(exc), code="invalid_catalog")
    async with state.sessions() as s:
        counts = await apply_catalog(s, spec)
        audit.from_request(s, request, "catalog.apply", "", counts)
        await s.commit()
    await state.reload_catalog()
    return json_response({"applied": counts})


@router.post("/chips", status_code=201)
async def create_chip(body: ChipSpec, request: Request) -> Response:
    async with _state(request).sessions() as s:
        if await s.get(Chip, body.id):
            raise Conflict(f"chip '{body.id}' already exists")
        chip = Chip(id=body.id, name=body.name or body.id, alias=body.alias)
        s.add(chip)
        await _commit(request, s)
        return json_response(chip_view(chip), 201)


@router.patch("/chips/{chip_id}")
async def patch_chip(chip_id: str, body: ChipPatch, request: Request) -> Response:
    async with _state(request).sessions() as s:
        chip = await _get(s, Chip, chip_id, "chip")
        _patch(chip, body)
        await _commit(request, s)
        return json_response(chip_view(chip))


@router.post("/models", status_code=201)
async def create_model(body: ModelSpec, request: Request) -> Response:
    async with _state(request).sessions() as s:
        if await s.get(Model, body.name):
            raise Conflict(f"model '{body.name}' already exists")
        model = Model(**body.model_dump())
        s.add(model)
        await _commit(request, s)
        return json_response(model_view(model), 201)


@router.patch("/models/{name}")
async def patch_model(name: str, body: ModelPatch, request: Request) -> Response:
    async with _state(request).sessions() as s:
        model = await _get(s, Model, name, "model")
        merged = validate(ModelSpec, {**model_view(model), **body.model_dump(exclude_unset=True)})
        _patch(model, ModelPatch.model_validate(merged.model_dump(exclude={"name"}), strict=False))
        await _commit(request, s)
        return json_response(model_view(model))


async def _deployment_by_name(s: AsyncSession, name: str) -> Deployment:
    model, _, chip = name.partition("@")
    row = (await s.execute(select(Deployment).where(Deployment.model == model, Deployment.chip == chip))).scalar()
    if row is None:
        raise NotFound(f"no deployment '{name}' (write it as model@chip)", code="deployment_not_found")
    return row


@router.post("/deployments", status_code=201)
async def create_deployment(body: DeploymentSpec, request: Request) -> Response:
    async with _state(request).sessions() as s:
        await _get(s, Model, body.model, "model")
        await _get(s, Chip, body.chip, "chip")
        taken = select(Deployment.id).where(Deployment.model == body.model, Deployment.chip == body.chip)
        if (await s.execute(taken)).first():
            raise Conflict(f"deployment {body.model}@{body.chip} already exists")
        row = Deployment(
            model=body.model,
            chip=body.chip,
            moderation=body.moderated,
            price_input=body.price.input,
            price_output=body.price.output,
            disclosure=body.disclosure,
            **body.limits.model_dump(),
        )
        s.add(row)
        await s.flush()
        for spec in body.endpoints:
            s.add(Endpoint(deployment_id=row.id, source="admin", **endpoint_columns(spec)))
        if body.own_rules is not None:
            s.add(ModerationRule(deployment_id=row.id, source="admin", **rule_columns(body.own_rules)))
        await _commit(request, s, action=None if body.moderated else "moderation.off")
        return json_response(deployment_view(row), 201)


@router.patch("/deployments/{dep_id}")
async def patch_deployment(dep_id: int, body: DeploymentPatch, request: Request) -> Response:
    async with _state(request).sessions() as s:
        row = await _get(s, Deployment, dep_id, "deployment")
        if body.price is not None:
            row.price_input, row.price_output = body.price.input, body.price.output
        if body.limits is not None:
            for name, value in body.limits.model_dump().items():
                setattr(row, name, value)
        if "disclosure" in body.model_fields_set:
            row.disclosure = body.disclosure
        action = None
        if body.moderation is not None and body.moderation != row.moderation:
            if not body.moderation and not body.confirm:
                raise InvalidRequest(
                    f'turning moderation off for {row.model}@{row.chip} needs "confirm": true',
                    param="confirm",
                    code="confirmation_required",
                )
            row.moderation = body.moderation
            action = "moderation.on" if body.moderation else "moderation.off"
        await _commit(request, s, action=action)
        return json_response(deployment_view(row))


async def _endpoint_rows(s: AsyncSession, where: Any = None) -> list[tuple[Endpoint, str]]:
    q = select(Endpoint, Deployment.model, Deployment.chip).join(Deployment).order_by(Endpoint.id)
    if where is not None:
        q = q.where(where)
    return [(e, f"{m}@{c}") for e, m, c in (await s.execute(q)).all()]


def _live(request: Request, view: dict[str, Any]) -> dict[str, Any]:
    """The stored endpoint plus what its engine reports now (the embedded engine's queue), if anything."""
    state = _state(request)
    info = state.catalog.endpoint(view["id"])
    if info is None:
        return {**view, "live": None, "health": None}
    stats = getattr(info.engine, "stats", None)
    health = state.router.health.get(info.id)
    cell = next(c for c in state.catalog.cells.values() if info in c.endpoints)
    return {
        **view,
        "effective_state": state.router.state(cell, info),
        "live": stats() if stats else None,
        "health": health.view() if health else None,
    }


@router.get("/endpoints")
async def list_endpoints(request: Request) -> Response:
    async with _state(request).sessions() as s:
        return json_response({"data": [_live(request, endpoint_view(e, d)) for e, d in await _endpoint_rows(s)]})


@router.post("/endpoints", status_code=201)
async def create_endpoint(body: EndpointCreate, request: Request) -> Response:
    async with _state(request).sessions() as s:
        dep = await _deployment_by_name(s, body.deployment)
        row = Endpoint(
            deployment_id=dep.id,
            source="admin",
            **endpoint_columns(EndpointSpec.model_validate(body.model_dump(exclude={"deployment"}))),
        )
        s.add(row)
        await _commit(request, s)
        return json_response(endpoint_view(row, body.deployment), 201)


@router.get("/endpoints/{ep_id}")
async def get_endpoint(ep_id: int, request: Request) -> Response:
    async with _state(request).sessions() as s:
        rows = await _endpoint_rows(s, Endpoint.id == ep_id)
        if not rows:
            raise NotFound(f"no endpoint '{ep_id}'", code="endpoint_not_found")
        return json_response(_live(request, endpoint_view(*rows[0])))


@router.patch("/endpoints/{ep_id}")
async def patch_endpoint(ep_id: int, body: EndpointPatch, request: Request) -> Response:
    async with _state(request).sessions() as s:
        rows = await _endpoint_rows(s, Endpoint.id == ep_id)
        if not rows:
            raise NotFound(f"no endpoint '{ep_id}'", code="endpoint_not_found")
        row, dep = rows[0]
        changes = body.model_dump(exclude_unset=True)
        if body.timeouts is not None:
            changes["timeouts"] = body.timeouts.model_dump(exclude_none=True)
        for name, value in changes.items():
            setattr(row, name, value)
        await _commit(request, s)
        return json_response(endpoint_view(row, dep))


# --- groups, codes, usage ---
class GroupBody(Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    multiplier: float = Field(default=1.0, ge=0)
    rpm: int | None = Field(default=None, ge=0)
    rpd: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    concurrency: int | None = Field(default=None, ge=0)
    user_rpm: int | None = Field(default=None, ge=0)
    user_rpd: int | None = Field(default=None, ge=0)
    user_tpm: int | None = Field(default=None, ge=0)
    user_concurrency: int | None = Field(default=None, ge=0)
    max_keys: int = Field(default=5, ge=1, le=1000)


class GroupPatch(Body):
    multiplier: float | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=0)
    rpd: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    concurrency: int | None = Field(default=None, ge=0)
    user_rpm: int | None = Field(default=None, ge=0)
    user_rpd: int | None = Field(default=None, ge=0)
    user_tpm: int | None = Field(default=None, ge=0)
    user_concurrency: int | None = Field(default=None, ge=0)
    max_keys: int | None = Field(default=None, ge=1, le=1000)


def group_view(g: Group) -> dict[str, Any]:
    return {c: getattr(g, c) for c in GroupBody.model_fields}


@router.post("/groups", status_code=201)
async def create_group(body: GroupBody, request: Request) -> Response:
    async with _state(request).sessions() as s:
        if await s.get(Group, body.name):
            raise Conflict(f"group '{body.name}' already exists")
        group = Group(**body.model_dump())
        s.add(group)
        await _commit(request, s, catalog=False)
        return json_response(group_view(group), 201)


@router.patch("/groups/{name}")
async def patch_group(name: str, body: GroupPatch, request: Request) -> Response:
    async with _state(request).sessions() as s:
        group = await _get(s, Group, name, "group")
        _patch(group, body)
        await _commit(request, s, catalog=False)
        return json_response(group_view(group))


class CodesCreate(Body):
    quota: int = Field(gt=0)
    count: int = Field(default=1, ge=1, le=10_000)


@router.post("/codes", status_code=201)
async def create_codes(body: CodesCreate, request: Request) -> Response:
    state = _state(request)
    async with state.sessions() as s:
        created = await codes.create_codes(s, state.secret, body.quota, body.count)
        audit.from_request(s, request, "codes.create", "", {"quota": body.quota, "count": body.count})
        await s.commit()
    return json_response({"quota": body.quota, "codes": created}, 201)


def code_view(c: Code) -> dict[str, Any]:
    return {
        "id": c.id,
        "prefix": c.prefix,
        "quota": c.quota,
        "created_at": c.created_at,
        "redeemed_by": c.redeemed_by,
        "redeemed_at": c.redeemed_at,
    }


@router.get("/usage")
async def admin_usage(
    request: Request, user: str | None = None, since: str | None = None, limit: int = 10_000, format: str = "json"
) -> Response:
    async with _state(request).sessions() as s:
        rows = await usage_rows(s, user=user, since=since, limit=limit)
    return usage_response(rows, format)


@router.get("/cells")
async def cells(request: Request) -> Response:
    """The M×N grid as it runs now: each cell's effective state and its endpoints' health."""
    state = _state(request)
    data = []
    for cell in state.catalog.cells.values():
        endpoints = []
        for e in cell.endpoints:
            health = state.router.health.get(e.id)
            endpoints.append(
                {
                    "id": e.id,
                    "state": state.router.state(cell, e),
                    "configured_state": e.state,
                    "weight": e.weight,
                    "priority": e.priority,
                    "health": health.view() if health else None,
                }
            )
        data.append(
            {
                "id": cell.id,
                "name": cell.name,
                "model": cell.model.name,
                "chip": cell.chip.id,
                "state": state.router.cell_state(cell),
                "endpoints": endpoints,
            }
        )
    return json_response({"data": data})


# --- moderation rule sets (global, or a deployment's own) and the audit log ---
class RuleSetCreate(ModerationSpec):
    deployment: str | None = None  # model@chip; unset = global

    @model_validator(mode="after")
    def _no_server_files(self) -> RuleSetCreate:
        if self.keyword_files:
            raise ValueError("keyword_files are read from catalogue files only; send `keywords` here")
        return self


class RuleSetPatch(Body):
    name: str | None = Field(default=None, max_length=64)
    keywords: list[str] | None = None
    regexes: list[str] | None = None
    classifier: ClassifierSpec | None = None

    @field_validator("regexes")
    @classmethod
    def _compiles(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else compiling(v)


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


async def _deployment_names(s: AsyncSession) -> dict[int, str]:
    return {d.id: f"{d.model}@{d.chip}" for d in (await s.execute(select(Deployment))).scalars()}


@router.get("/moderation")
async def list_rule_sets(request: Request) -> Response:
    async with _state(request).sessions() as s:
        names = await _deployment_names(s)
        rows = (await s.execute(select(ModerationRule).order_by(ModerationRule.id))).scalars()
        return json_response({"data": [rule_set_view(r, names) for r in rows]})


@router.post("/moderation", status_code=201)
async def create_rule_set(body: RuleSetCreate, request: Request) -> Response:
    async with _state(request).sessions() as s:
        deployment = await _deployment_by_name(s, body.deployment) if body.deployment else None
        row = ModerationRule(deployment_id=deployment.id if deployment else None, source="admin", **rule_columns(body))
        s.add(row)
        await _commit(request, s, action="moderation.rules.create")
        return json_response(rule_set_view(row, await _deployment_names(s)), 201)


@router.get("/moderation/{rule_id}")
async def get_rule_set(rule_id: int, request: Request) -> Response:
    async with _state(request).sessions() as s:
        return json_response(
            rule_set_view(await _get(s, ModerationRule, rule_id, "rule set"), await _deployment_names(s))
        )


@router.patch("/moderation/{rule_id}")
async def patch_rule_set(rule_id: int, body: RuleSetPatch, request: Request) -> Response:
    async with _state(request).sessions() as s:
        row = await _get(s, ModerationRule, rule_id, "rule set")
        for name in body.model_fields_set:
            value = getattr(body, name)
            setattr(row, name, value.model_dump() if isinstance(value, BaseModel) else value)
        row.updated_at = datetime.now(UTC)
        await _commit(request, s, action="moderation.rules.update")
        return json_response(rule_set_view(row, await _deployment_names(s)))


@router.delete("/moderation/{rule_id}")
async def delete_rule_set(rule_id: int, request: Request) -> Response:
    async with _state(request).sessions() as s:
        await s.delete(await _get(s, ModerationRule, rule_id, "rule set"))
        await _commit(request, s, action="moderation.rules.delete")
        return json_response({"id": rule_id, "deleted": True})


@router.get("/audit")
async def list_audit(
    request: Request, action: str | None = None, actor: str | None = None, since: str | None = None, limit: int = 1000
) -> Response:
    """The newest first."""
    async with _state(request).sessions() as s:
        found = await audit.rows(
            s, action=action, actor=actor, since=parse_since(since), limit=max(1, min(limit, 10_000))
        )
        return json_response({"data": [audit.view(a) for a in found]})


@router.get("/alerts")
async def list_alerts(
    request: Request, kind: str | None = None, user: int | None = None, since: str | None = None, limit: int = 1000
) -> Response:
    """The newest first; `kind` is one of usage_spike, new_ip, quota_80, quota_100, endpoint_down."""
    async with _state(request).sessions() as s:
        found = await alerts.rows(
            s, kind=kind, user_id=user, since=parse_since(since), limit=max(1, min(limit, 10_000))
        )
        return json_response({"data": [alerts.view(a) for a in found]})


def _simple_routes(
    path: str,
    table: type[Any],
    view: Callable[[Any], dict[str, Any]] | None,
    what: str,
    *,
    int_id: bool = True,
    catalog: bool = True,
    listing: bool = True,
) -> None:
    """GET list, GET one and DELETE one for a table whose view needs nothing but the row."""

    def ident(raw: str) -> int | str:
        if not int_id:
            return raw
        if not (raw.isascii() and raw.isdigit()):  # str.isdigit() also takes '²', which int() refuses
            raise NotFound(f"no {what} '{raw[:64]}'", code=f"{what}_not_found")
        return int(raw)

    async def get_one(item_id: str, request: Request) -> Response:
        assert view is not None
        async with _state(request).sessions() as s:
            return json_response(view(await _get(s, table, ident(item_id), what)))

    async def delete_one(item_id: str, request: Request) -> Response:
        async with _state(request).sessions() as s:
            key = ident(item_id)
            await s.delete(await _get(s, table, key, what))
            await _commit(request, s, catalog=catalog)
            return json_response({"id": key, "deleted": True})

    async def list_all(request: Request) -> Response:
        assert view is not None
        async with _state(request).sessions() as s:
            rows = (await s.execute(select(table).order_by(*table.__table__.primary_key.columns))).scalars()
            return json_response({"data": [view(r) for r in rows]})

    if view is not None and listing:
        router.add_api_route(path, list_all, methods=["GET"], name=f"list {what}s")
    if view is not None:
        router.add_api_route(f"{path}/{{item_id}}", get_one, methods=["GET"], name=f"get {what}")
    router.add_api_route(f"{path}/{{item_id}}", delete_one, methods=["DELETE"], name=f"delete {what}")


_simple_routes("/users", User, user_view, "user", catalog=False)
_simple_routes("/groups", Group, group_view, "group", int_id=False, catalog=False)
_simple_routes("/codes", Code, code_view, "code", catalog=False)
_simple_routes("/keys", ApiKey, accounts.key_view, "key", catalog=False, listing=False)
_simple_routes("/chips", Chip, chip_view, "chip", int_id=False)
_simple_routes("/models", Model, model_view, "model", int_id=False)
_simple_routes("/deployments", Deployment, deployment_view, "deployment")
_simple_routes("/endpoints", Endpoint, None, "endpoint")
