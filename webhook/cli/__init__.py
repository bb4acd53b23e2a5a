"""The ``sidecar-injector`` command line."""

from webhook.cli.main import main

__all__ = ["main"]
