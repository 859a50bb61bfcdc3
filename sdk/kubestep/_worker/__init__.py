"""The worker runtime: claims queued runs, executes them by replay, records status."""
