"""sidecar-injector: a mutating admission webhook that adds an Envoy sidecar to pods.

The package is layered so dependencies point one way: ``constants`` and ``wire``
-> ``config`` and ``settings`` -> ``engine`` (pure) -> ``admission`` -> ``app``
(the only FastAPI importer) -> ``cli``. Edges (namespace sources, certificates,
TLS) are used only by the app and the CLI.
"""

__version__ = "0.1.0"
