"""Side-by-side benchmarks of corral against other ASGI servers (see bench/README.md)."""
