"""Importing this module fails inside the app's own code."""

raise RuntimeError("settings are\nmissing")
