"""The serving process: uvicorn running the app, and nothing else in memory.

`mxn serve` does the one-off start-up work (migrations, the catalogue, the first admin user) and then replaces
itself with `python -m mxn.server` (same process id, same output), so that what that work imports (Alembic, the
CLI, the catalogue loader) never takes memory in the process that serves. Settings come from the environment,
where `mxn serve` put its flags.
"""

from __future__ import annotations

import copy
import signal
from typing import Any

import uvicorn
import uvicorn.config

from mxn.config import get_settings


def main() -> None:
    settings = get_settings()
    # uvicorn shuts down gracefully on SIGTERM (no new connections, open streams finish within the deadline,
    # usage flushed) and then raises the signal again; with this handler that last step is a no-op, so a
    # clean stop exits 0 as process managers expect.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        "mxn.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="mxn.loop:Loop",  # uvloop, accepting every waiting connection at once
        http="httptools",
        ws="none",  # mxn has no WebSocket routes: the websockets library stays out of memory
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        access_log=False,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default: a local client could then choose the
        # address that key allowlists and the auth-failure throttle see. Only proxies named in settings are.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, and mxn's own loggers (`mxn.*`) beside it at MXN_LOG_LEVEL, in its format and on its
    stream, in every worker: what mxn says of its dependencies, journals and engines reaches the operator."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["mxn"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
    }
    config["handlers"]["mxn"] = {"formatter": "mxn", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    config["loggers"]["mxn"] = {"handlers": ["mxn"], "level": level.upper(), "propagate": False}
    return config


if __name__ == "__main__":  # and not when a `--workers` child imports this as its main module
    main()
