"""This module calls sys.exit while it is imported (e.g. a script's argument parsing)."""

import sys

sys.exit(2)
