"""sidecar-injector: a mutating admission webhook that adds an Envoy sidecar to pods.

The package is a stack of layers, each a sub-package, dependencies pointing
down only (pyproject.toml's import contracts keep it so; ARCHITECTURE.md walks
through them): ``cli`` > ``ops`` | ``service`` > ``cluster`` | ``pki`` >
``manifests`` > ``engine`` > ``contract``.
"""

__version__ = "0.1.0"
