"""`python -m corral` runs the command-line interface."""

from corral.cli import main

raise SystemExit(main())
