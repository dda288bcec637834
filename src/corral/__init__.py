"""corral: a pre-fork production server for ASGI applications."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Config", "Server", "__version__", "run"]

_API = frozenset({"Config", "Server", "run"})


def __getattr__(name: str) -> Any:
    # corral.run, corral.Config, corral.Server (corral/api.py), imported on first use: a worker importing
    # corral.http.* does not pay for the embedding API.
    if name in _API:
        from corral import api

        return getattr(api, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")
