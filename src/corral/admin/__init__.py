"""The admin side of corral: health, Prometheus metrics and the pool's status, read from the scoreboard by
a child of the master (never by the app's workers), and what the master does each turn to feed them."""

__all__: list[str] = []
