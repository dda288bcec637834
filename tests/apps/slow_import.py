"""An app whose import takes a while (SLOW_IMPORT_SECONDS, default 2): a signal can reach a worker that is still
loading it."""

from __future__ import annotations

import os
import time

from tests.apps.echo import app

__all__ = ["app"]

time.sleep(float(os.environ.get("SLOW_IMPORT_SECONDS", "2")))
