"""Names and numbers that are part of the external contract.

Kept in one place because users, manifests, the proxy bootstrap and the
iptables rules must all agree on them; a change here is a contract change.
"""

from typing import Final

PREFIX: Final = "sidecar.mesh.io/"

PROXY_CONTAINER: Final = "mesh-proxy"
INIT_CONTAINER: Final = "mesh-init"
INJECTED_NAMES: Final = frozenset({PROXY_CONTAINER, INIT_CONTAINER})

# Namespace opt-in label and its two meaningful values.
NAMESPACE_INJECTION_LABEL: Final = "sidecar-injection"
ENABLED: Final = "enabled"
DISABLED: Final = "disabled"

INJECT_KEY: Final = PREFIX + "inject"
# Revisions (docs/upgrade.md): the label, on a namespace or a pod, that picks
# the injector revision (the pod's wins), and the name of the revision-less
# install, which also serves NAMESPACE_INJECTION_LABEL=ENABLED.
REVISION_LABEL: Final = PREFIX + "rev"
DEFAULT_REVISION: Final = "default"
STATUS_ANNOTATION: Final = PREFIX + "status"
DEFAULT_CONTAINER_ANNOTATION: Final = "kubectl.kubernetes.io/default-container"
MIRROR_POD_ANNOTATION: Final = "kubernetes.io/config.mirror"

# Proxy ports. Outbound and inbound are where iptables redirects to; the other
# three are the proxy's own and are never redirected inbound.
OUTBOUND_PORT: Final = 15001
INBOUND_PORT: Final = 15006
ADMIN_PORT: Final = 15000
HEALTH_PORT: Final = 15021
PROMETHEUS_PORT: Final = 15090
HEALTH_PATH: Final = "/healthz/ready"
PROMETHEUS_PATH: Final = "/stats/prometheus"
PROXY_PORTS: Final = (OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT, HEALTH_PORT, PROMETHEUS_PORT)

DEFAULT_PROXY_UID: Final = 1337

# Where an object without a namespace of its own goes (kubectl's default; for
# /mutate only hand-written reviews lack request.namespace).
DEFAULT_NAMESPACE: Final = "default"

DEFAULT_EXCLUDED_NAMESPACES: Final = (
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "mesh-system",
)

# The serving side.
DEFAULT_HTTPS_PORT: Final = 8443
SERVICE_NAME: Final = "sidecar-injector"
SERVICE_NAMESPACE: Final = "mesh-system"
