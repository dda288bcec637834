"""corral: a pre-fork production server for ASGI applications."""

__version__ = "0.1.0"
__all__ = ["__version__"]
