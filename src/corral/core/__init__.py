"""The shared layer: what every process (master, worker, admin) uses and imports nothing above it."""
