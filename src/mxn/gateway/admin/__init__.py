"""/admin: the operator's API (MXN_ADMIN_KEY or an admin user's key). It mirrors the CLI, and like the CLI and
/api it changes the store only through `mxn.services`, which writes each change's audit record.

One module per area; this one only puts their routes under /admin, behind the admin check.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from mxn.gateway.admin import catalog, codes, deployments, keys, managed, moderation, usage, users
from mxn.gateway.auth import admin_principal, held_balances_back

router = APIRouter(prefix="/admin", tags=["admin"])

# Most of /admin shows or changes balances: what this replica holds of them goes back to the store first.
_balances = [Depends(admin_principal), Depends(held_balances_back)]
router.include_router(users.router, dependencies=_balances)
router.include_router(keys.router, dependencies=_balances)
router.include_router(catalog.router, dependencies=_balances)
router.include_router(deployments.router, dependencies=_balances)
router.include_router(codes.router, dependencies=_balances)
router.include_router(usage.router, dependencies=_balances)
router.include_router(moderation.router, dependencies=_balances)
# Nodes and managed deployments touch no balances.
router.include_router(managed.router, dependencies=[Depends(admin_principal)])
