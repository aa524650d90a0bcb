"""Start the service with uvicorn (one process: the loaded models live in its memory)."""

from __future__ import annotations

import os
import sys

from serving.app import ServiceSettings, create_app
from storage.store import Store

__all__ = ["TOKEN_ENV_VAR", "serve"]

#: Environment variable holding the bearer token (kept off the command line, where any
#: local user could read it in the process list).
TOKEN_ENV_VAR = "MOE_API_TOKEN"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def serve(store: Store, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    """Serve ``store`` on ``host:port`` until interrupted."""
    import uvicorn

    token = os.environ.get(TOKEN_ENV_VAR) or None
    if token is None and host not in _LOOPBACK:
        print(
            f"warning: serving on {host} without a token; set {TOKEN_ENV_VAR} to require one",
            file=sys.stderr,
        )
    app = create_app(store, ServiceSettings(token=token, device=device))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
