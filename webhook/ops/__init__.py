"""Operating a live install: health checks and outdated sidecars."""
