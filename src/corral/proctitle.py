"""Process titles (`corral: master [name]`, `corral: worker [name]`), so `ps` and `top` show who is who."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.config import Config

__all__ = ["set_title"]


def set_title(cfg: Config, role: str) -> None:
    """Title this process after its role and `proc_name` (default: the app spec); silent without setproctitle."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    name = cfg.settings.process.proc_name or cfg.app or "corral"
    setproctitle(f"corral: {role} [{name}]")
