"""Stored changes, one writer each: what /admin, /api and the CLI change in the store goes through here.

Every change takes the session and the `audit.Actor` who makes it, writes its own audit record under a fixed
`noun.verb` action (`audit.Action`) in the same transaction, and commits. Reads that more than one caller needs
(`keys.listing`, `deployments.by_name`) live beside the changes. HTTP stays out: callers validate their input
and render the rows.
"""

from __future__ import annotations

from mxn.services import (
    catalog,
    chips,
    codes,
    deployments,
    endpoints,
    groups,
    keys,
    managed,
    models,
    moderation,
    users,
)

__all__ = [
    "catalog",
    "chips",
    "codes",
    "deployments",
    "endpoints",
    "groups",
    "keys",
    "managed",
    "models",
    "moderation",
    "users",
]
