"""Real Kubernetes on this machine: the control plane, the install on it, images, the node."""
