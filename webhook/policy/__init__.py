"""Policy mode: the injector as admission policies the API server runs, generated from
the engine's own definitions (docs/policy.md)."""
