"""The one door to the Kubernetes API, and the namespace sources admission reads."""
