"""Content moderation: a deployment's switch (`moderation.on`, `moderation.off`) and the rule sets, global or a
deployment's own (`moderation.rules.create|update|delete`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.catalog.apply import rule_columns
from mxn.catalog.schema import ModerationSpec
from mxn.services.common import assign, commit, get
from mxn.store.models import Deployment, ModerationRule


def record(s: AsyncSession, actor: Actor, row: Deployment) -> None:
    """The audit record of the deployment's switch as it stands now."""
    action: audit.Action = "moderation.on" if row.moderation else "moderation.off"
    audit.record(s, actor, action, f"dep_id={row.id}", {"deployment": f"{row.model}@{row.chip}"})


def switch(s: AsyncSession, actor: Actor, row: Deployment, on: bool) -> bool:
    """Turn the deployment's moderation on or off in the session's transaction, recorded; False if it already was.
    Asking to turn it off is the caller's to confirm."""
    if row.moderation == on:
        return False
    row.moderation = on
    record(s, actor, row)
    return True


async def set(s: AsyncSession, actor: Actor, row: Deployment, on: bool) -> bool:
    """`switch`, committed."""
    changed = switch(s, actor, row, on)
    if changed:
        await commit(s)
    return changed


async def rule_set(s: AsyncSession, rule_id: int) -> ModerationRule:
    return await get(s, ModerationRule, rule_id, "rule set")


async def rule_sets(s: AsyncSession) -> list[ModerationRule]:
    return list((await s.execute(select(ModerationRule).order_by(ModerationRule.id))).scalars())


async def create_rules(
    s: AsyncSession, actor: Actor, spec: ModerationSpec, deployment: Deployment | None
) -> ModerationRule:
    """A rule set of the deployment's own, or a global one (None)."""
    row = ModerationRule(deployment_id=deployment.id if deployment else None, source="admin", **rule_columns(spec))
    s.add(row)
    await s.flush()
    details = {"deployment": f"{deployment.model}@{deployment.chip}" if deployment else None, **rule_columns(spec)}
    audit.record(s, actor, "moderation.rules.create", f"rule_id={row.id}", details)
    await commit(s)
    return row


async def update_rules(s: AsyncSession, actor: Actor, row: ModerationRule, changes: dict[str, Any]) -> ModerationRule:
    """`changes`: `name`, `keywords`, `regexes`, `classifier` (a dict)."""
    assign(row, changes)
    row.updated_at = datetime.now(UTC)
    audit.record(s, actor, "moderation.rules.update", f"rule_id={row.id}", changes)
    await commit(s)
    return row


async def delete_rules(s: AsyncSession, actor: Actor, row: ModerationRule) -> None:
    audit.record(s, actor, "moderation.rules.delete", f"rule_id={row.id}")
    await s.delete(row)
    await commit(s)
