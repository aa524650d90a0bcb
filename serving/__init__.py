"""The HTTP service (``moe api``): forecasts with the champion, the registry, monitoring.

Above ``pipeline/`` in the layers: it reuses the batch forecast's loading and row-making
functions, so the same series gets the same forecast over HTTP and in the forecasts table.
"""

from serving.app import ServiceSettings, create_app
from serving.run import TOKEN_ENV_VAR, serve

__all__ = ["ServiceSettings", "create_app", "serve", "TOKEN_ENV_VAR"]
