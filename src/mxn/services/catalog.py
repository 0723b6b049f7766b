"""A whole catalogue document applied at once: `catalog.apply`."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.audit import Actor
from mxn.catalog.apply import apply_catalog
from mxn.catalog.schema import CatalogFile
from mxn.services.common import commit


async def apply(s: AsyncSession, actor: Actor, spec: CatalogFile) -> dict[str, int]:
    """Counts of what was created, updated and removed."""
    counts = await apply_catalog(s, spec)
    audit.record(s, actor, "catalog.apply", "", counts)
    await commit(s)
    return counts
