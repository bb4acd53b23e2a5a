"""Manifests in and out: JSON/YAML documents, rendering for people, whole-manifest previews."""
