# Everything runs from the project's own virtualenv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint fmt clean

install: $(STAMP)

# Dependencies at the versions in constraints.txt (what the tests last passed with).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint constraints.txt -e '.[dev]'
	touch $(STAMP)

# Re-pin: a fresh virtualenv with the newest versions pyproject.toml allows,
# frozen into constraints.txt. Review the diff and run make test before committing.
.PHONY: constraints
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/pip install --quiet --upgrade pip
	build/constraints-venv/bin/pip install --quiet '.[dev]'
	{ sed -n '1,3p' constraints.txt; build/constraints-venv/bin/pip freeze --exclude-editable \
		| grep -v '^sidecar-injector'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf build/constraints-venv

# The tiers (tests/conftest.py, README.md "Tests"): tests/unit runs in-process only,
# tests/process starts real processes, tests/e2e runs the control plane, network
# namespaces and the real node. test-fast is the unit tier, the loop to run
# after every change; test is everything. Both spread the tests over
# $(TEST_WORKERS) processes (pytest-xdist; TEST_WORKERS=0 runs them in this
# one). In test a file is a unit of work, or a folder under tests/e2e/, so its
# module and package fixtures start once (tests/tiers.py, unit_of_work;
# --dist loadgroup would not group: xdist 3.8 cannot rename pytest 9's node
# ids), taken in the order tests/tiers.py gives, the longest e2e work first.
# HYPOTHESIS_PROFILE=ci (what .ci/run sets) runs the properties in full.
TEST_WORKERS ?= 4
PYTEST := $(BIN)/python -m pytest

test-fast: install
	$(PYTEST) -q tests/unit -n $(TEST_WORKERS)

test: install
	$(PYTEST) -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install
	$(BIN)/ruff check webhook tests scripts bench harness
	$(BIN)/ruff format --check webhook tests scripts bench harness
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff format webhook tests scripts bench harness
	$(BIN)/ruff check --fix webhook tests scripts bench harness

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# --- Images (README.md, "Images") ---
# The two images the install runs, built from this repository: the webhook
# (Dockerfile) and mesh-init (images/mesh-init/Dockerfile). Nobody publishes
# them: build them, then load them into the cluster's nodes (image-kind, or
# README.md for containerd) or push them to a registry the nodes pull from.
# IMAGE_REPO is the one setting: the images are $(IMAGE_REPO)/webhook and
# $(IMAGE_REPO)/mesh-init, tagged with the package version, and `make
# manifests` writes those names into the install. (`make images`, below, is
# the e2e tests' own buildah build with stand-in base images.)
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' webhook/__init__.py)
IMAGE_REPO ?= ghcr.io/sidecar-injector
DOCKER ?= docker
KIND ?= kind
KIND_CLUSTER ?= kind
PROJECT_IMAGES = $(IMAGE_REPO)/webhook:$(VERSION) $(IMAGE_REPO)/mesh-init:$(VERSION)

.PHONY: image-build image-push image-kind

image-build:
	$(DOCKER) build -t $(IMAGE_REPO)/webhook:$(VERSION) .
	$(DOCKER) build -t $(IMAGE_REPO)/mesh-init:$(VERSION) images/mesh-init

image-push: image-build
	for image in $(PROJECT_IMAGES); do $(DOCKER) push $$image || exit 1; done

# Into every node of a kind cluster; the Deployment's imagePullPolicy
# (IfNotPresent) then never pulls them.
image-kind: image-build
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(PROJECT_IMAGES)

# --- Install manifests (README.md, "Installing in a cluster") ---
# manifests/install.yaml = kustomize base + TLS Secret + caBundle, ready for kubectl apply,
# with the images from IMAGE_REPO (above). It holds a private key, so it is
# git-ignored and written owner-only.
KUBECTL ?= kubectl
CERTS_DIR ?= certs

.PHONY: manifests deploy

manifests: install $(CERTS_DIR)/tls.crt policy-manifests
	$(BIN)/python scripts/render_install.py --manifests manifests --certs $(CERTS_DIR) \
		--out manifests/install.yaml --kubectl $(KUBECTL) --image-repo $(IMAGE_REPO)

# Policy mode (docs/policy.md): manifests/policy/policy.yaml is what
# `sidecar-injector policy` prints for the install's config; committed (it holds
# no secret), re-rendered here after a config change (tests/process/test_policy_manifests.py
# fails while the two differ). Written to a temporary file first, so a failed
# render leaves the committed one as it was. The Helm chart ships the same file
# for its policy mode (Helm cannot run the generator; docs/upgrade.md).
.PHONY: policy-manifests
policy-manifests: install
	$(BIN)/sidecar-injector policy --config manifests/base/injector-config.yaml \
		> manifests/policy/policy.yaml.new
	mv manifests/policy/policy.yaml.new manifests/policy/policy.yaml
	cp manifests/policy/policy.yaml charts/sidecar-injector/files/policy.yaml

# Only when missing: the CA is the cluster's trust anchor for the webhook, and
# reissuing it on every run would churn caBundle for no reason.
$(CERTS_DIR)/tls.crt:
	$(BIN)/sidecar-injector certs --out $(CERTS_DIR) \
		--service sidecar-injector --namespace mesh-system

# Apply, then wait: with failurePolicy Fail, meshed pods cannot be created
# until a replica is ready, so "deployed" should mean "serving".
deploy: manifests
	$(KUBECTL) apply -f manifests/install.yaml
	$(KUBECTL) -n mesh-system rollout status deployment/sidecar-injector --timeout=180s

# --- Local control plane for e2e tests (harness/kube/control_plane.py) ---
# kube-apiserver and kube-controller-manager are built from the pinned
# k8s.io/kubernetes module (harness/kube/controlplane/go.mod) and cached in
# $SIDECAR_INJECTOR_CACHE (default ~/.cache/sidecar-injector); a cold build needs Go
# and takes minutes, a cached one returns at once.
.PHONY: control-plane cluster

control-plane:
	bash harness/kube/build_control_plane.sh

# Foreground etcd + kube-apiserver + kube-controller-manager on 127.0.0.1;
# prints an `export KUBECONFIG=...` line; Ctrl-C tears it all down.
cluster: install control-plane
	$(BIN)/python -m harness.kube.run_cluster

# --- xDS test server for pod-in-a-box (tests/e2e/xds/, docs/xds.md) ---
# go-control-plane's ADS server with a JSON control port, built (CGO off) and
# cached in $SIDECAR_INJECTOR_CACHE by a hash of its sources; returns at once
# when cached. .ci/run calls it before `make test`.
.PHONY: xds-server

xds-server:
	bash tests/e2e/build_go_tool.sh xds xds-testserver

# --- celcost for the policy mode's cost tests (tests/e2e/celcost/, docs/policy.md) ---
# The API server's admission CEL code with a cost counter, built and cached
# like the xDS test server; .ci/run calls it before `make test`.
.PHONY: celcost

celcost:
	bash tests/e2e/build_go_tool.sh celcost celcost

# --- Helm (charts/sidecar-injector) ---
# helm v4, built from its Go module like the binaries above (go install, about
# three minutes cold) and cached in $SIDECAR_INJECTOR_CACHE/helm-<version>;
# returns at once when cached. The chart tests and the real node's
# `helm install` use it; .ci/run calls it before `make test`.
.PHONY: helm

helm:
	bash harness/kube/build_helm.sh

# --- A real one-node cluster (harness/kube/node.py, docs/e2e.md) ---
# kubelet, kube-scheduler and kube-proxy from the same pinned module, cached in
# $SIDECAR_INJECTOR_CACHE/kube-node-<version>; the project's images and the
# base-image stand-ins built with buildah, cached by the hash of their inputs
# in $SIDECAR_INJECTOR_CACHE/images. Both are cold builds of minutes and
# return at once when cached; .ci/run runs them before `make test`.
# `make node` (as root) runs the control plane, containerd, the node
# components and the rendered install in the foreground; Ctrl-C tears it all
# down and restores the host. `make e2e-node` runs only the node tests.
.PHONY: node-binaries images node e2e-node

node-binaries:
	bash harness/kube/build_control_plane.sh node

images: install
	$(BIN)/python -m harness.kube.images

node: install control-plane node-binaries images
	$(BIN)/python -m harness.kube.run_node

e2e-node: install control-plane node-binaries images
	$(BIN)/python -m pytest -m node tests/e2e -q

# --- Benchmarks (BENCHMARKS.md) ---
# The engine per pod; the HTTPS service under wrk against two baselines (needs
# wrk and taskset: apt-get install wrk util-linux, and 2 cores); pod creation end
# to end through kube-apiserver (the e2e control plane, `make control-plane`);
# pod start-up on a real node (root and the node's parts, docs/e2e.md). A
# section that cannot run here is skipped with its reason. BEFORE names a git
# ref (commit, tag, branch) whose webhook is measured next to the current one,
# installed once into a virtualenv of its own: `make bench BEFORE=v0.1.0`;
# empty (the default) leaves the "before" column out. Rewrites BENCHMARKS.md
# (raw figures and logs: bench/results/). Most of the run is the node section;
# run it on a quiet machine.
BEFORE ?=
.PHONY: bench

bench: install
	$(BIN)/python -m bench.run --out . $(if $(BEFORE),--before $(BEFORE))

# --- Pod-in-a-box (tests/e2e/podbox.py) ---
# An injected pod's mesh-init and mesh-proxy run for real in a network namespace,
# proving interception end to end. Needs root, iproute2, iptables and util-linux
# (setpriv); skips with the reason otherwise. Takes a few seconds.
.PHONY: e2e

e2e: install
	$(BIN)/python -m pytest -m netns tests/e2e -q

# --- Local webhook (README.md, "The HTTPS service") ---
# `make run` on a fresh machine: venv, dev certificates (only if missing, so
# a CA you already trust stays), then HTTPS on 127.0.0.1:8443 in the
# foreground with the example namespaces. Try it with the curl commands in
# README.md, "The HTTPS service"; Ctrl-C (or SIGTERM) drains in-flight requests and stops.
RUN_HOST ?= 127.0.0.1
RUN_PORT ?= 8443
RUN_NAMESPACES ?= examples/namespaces.yaml

.PHONY: run certs

# The certs rule above runs the installed CLI, so it needs the venv first.
$(CERTS_DIR)/tls.crt: | install

certs: $(CERTS_DIR)/tls.crt

run: install $(CERTS_DIR)/tls.crt
	$(BIN)/sidecar-injector serve --host $(RUN_HOST) --port $(RUN_PORT) \
		--cert-dir $(CERTS_DIR) --namespaces-file $(RUN_NAMESPACES)
