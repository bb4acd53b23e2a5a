"""What the tests and the benchmarks both run: real servers, certificates, clients, clusters.

``server`` starts ``sidecar-injector serve`` and ``tls_client`` reaches it as
kube-apiserver does; ``fake_kube_api`` is the one scriptable API server;
``kube`` holds the real control plane, the install on it and the one-node
cluster. Nothing here imports ``tests``: ``bench`` uses it as the tests do.
"""
