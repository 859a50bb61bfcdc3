# Kubestep developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
KIND_CLUSTER ?= kubestep-e2e
IMAGE  ?= kubestep:dev

.PHONY: help venv tools browser postgres node-tools test unit demo bench bench-server bench-peer chaos image node node-down node-e2e kind-e2e kind-image lint clean

help:
	@echo "make test      set up (venv + control-plane tools) and run the whole suite on a local control plane"
	@echo "make demo      set up and run the demo on the local control plane"
	@echo "make bench     cancel-latency and timeout-overshoot benchmark (writes bench/results/; BENCH_ARGS=... passes options)"
	@echo "make bench-journal  the step stores (journal vs status) side by side: steps/s, writes, etcd bytes per step (issue 19)"
	@echo "make bench-etcd-growth  etcd's DB size over 10 min of the goal-1 load, sampled every 30 s (issue 19)"
	@echo "make bench-retention  10,000 runs/day compressed (k=144): objects and bytes in the TTL steady state (issue 19)"
	@echo "make bench-peer  the same workload on Kubestep and on a Temporal dev server, in one table"
	@echo "make bench-cascade  a root's cancel down a tree of child runs: every run terminal, p50/p99 (issue 21)"
	@echo "make bench-argo  Argo Workflows v4.0.5 (built here) beside Kubestep on the real node, one table (root; issue 22)"
	@echo "make image     the project image without Docker: buildah on a base built from Debian packages (hack/image/build.sh)"
	@echo "make chaos     the chaos soak: 500 runs under killed workers, operator, apiserver and etcd (CHAOS_ARGS=...)"
	@echo "make node      a real node: kubelet, containerd, scheduler, kube-proxy + the control plane in an isolated netns (root)"
	@echo "make node-e2e  images, node, helm install, the suite and tests/pods against real pods (root; hack/node/e2e.sh)"
	@echo "make kind-e2e  the same tests against the chart in a kind cluster (docker + kind, or here: root + podman; hack/kind/e2e.sh)"
	@echo "make kind-image  the kind node image built here, no docker, no registry (root; hack/kind/node.sh)"

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Builds etcd, kube-apiserver, kube-controller-manager, kubectl and helm from
# pinned Go modules into ~/.cache/kubestep (only what is missing).
tools:
	hack/controlplane/build.sh

# The browser tests drive Debian's chromium (Playwright's own download does not work here, and no
# browser is fetched at test time); they fail, never skip, without it.
browser:
	command -v chromium >/dev/null || (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# The Postgres step store's tests start Debian's PostgreSQL server as a local process
# (dev/kubestep_dev/postgres.py, like the control plane); they fail, never skip, without it.
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)

test: venv tools browser postgres
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest tests/unit

demo: venv tools
	$(BIN)/python examples/demo.py

bench: venv tools
	$(BIN)/python bench/cancel_latency.py $(BENCH_ARGS)

# Issue 19's benchmark of record: each step store (KUBESTEP_STEP_STORE=batch, then status) on one plane.
bench-journal: venv tools
	$(BIN)/python bench/step_journal.py $(BENCH_ARGS)

# Issue 19, goal 4: etcd's DB size and the namespace's objects over 10 min at the goal-1 rate (bench/etcd_growth.py).
.PHONY: bench-etcd-growth bench-retention
bench-etcd-growth: venv tools
	$(BIN)/python bench/etcd_growth.py $(BENCH_ARGS)

# Issue 19, retention: 10,000 runs/day with a day's TTL, compressed k-fold (bench/retention_steady.py).
bench-retention: venv tools
	$(BIN)/python bench/retention_steady.py $(BENCH_ARGS)

# Issue 23, step 0: systemd in a rootful podman node container, in a netns with no route out (hack/kind/README.md).
.PHONY: kind-spike
kind-spike:
	bash hack/kind/spike.sh

# Issue 21: a root's cancel down a tree of child runs (100 children; 3 levels of 4), every run terminal.
# Issue 22: Argo Workflows built here, beside Kubestep on the real node (hack/argo/bench.sh; not in CI).
.PHONY: bench-argo
bench-argo: venv node-tools
	hack/argo/bench.sh $(BENCH_ARGS)

.PHONY: bench-cascade
bench-cascade: venv tools
	$(BIN)/python bench/cascade.py $(BENCH_ARGS)

# kubestep server at 10,000 runs, without and with its cache (bench/server_load.py; BENCH_ARGS=...).
bench-server: venv tools
	$(BIN)/python bench/server_load.py $(BENCH_ARGS)

# The project image without Docker or a registry (needs root, buildah, podman, mmdebstrap, runc).
image:
	IMAGE=$(IMAGE) hack/image/build.sh

# A real node (hack/node/): kubelet, kube-scheduler and kube-proxy from the same pinned module.
node-tools: tools
	hack/controlplane/build.sh node

# Needs root and Debian's containerd, containernetworking-plugins, runc, iptables, conntrack,
# podman, buildah, mmdebstrap (hack/node/up.sh says why each). The images come from `make image`.
node: venv node-tools
	hack/node/up.sh

node-down:
	hack/node/down.sh --purge

# Images, a node from scratch, helm install, the suite and tests/pods against the chart's pods.
node-e2e: venv node-tools
	hack/node/e2e.sh

# The chaos soak (tests/chaos/soak.py) on a control plane of its own; the suite runs a short one.
chaos: venv tools
	$(BIN)/python -m tests.chaos.soak --out bench/results/chaos.md $(CHAOS_ARGS)

# Kubestep and the Temporal peer side by side (builds the peer outside the repo; tens of minutes).
bench-peer: venv tools
	bench/temporal-setup.sh
	$(BIN)/python bench/side_by_side.py $(BENCH_ARGS)

lint: venv tools
	$(HOME)/.cache/kubestep/bin/helm lint charts/kubestep

# kind end to end (hack/kind/e2e.sh): the chart in a kind cluster, the suite and tests/pods against
# it, the same tests as node-e2e. KIND_ROUTE=docker (a laptop: docker, kindest/node, kind-config.yaml)
# or local (root, podman, the node image of `make kind-image`, hack/kind/kind-config.yaml, all in a
# netns with no route out); docker is the default when a docker command exists. The cluster is
# deleted afterwards, also on failure.
kind-e2e: venv tools
	KIND_CLUSTER=$(KIND_CLUSTER) hack/kind/e2e.sh

# The kind node image without docker or a registry (root): binaries from Go modules, the seven images
# kubeadm names, the node (cached in ~/.cache/kubestep/kind and root's podman store; hack/kind/README.md).
kind-image: tools
	hack/node/deps.sh
	bash hack/kind/build.sh && bash hack/kind/images.sh && bash hack/kind/node.sh

clean:
	rm -rf $(VENV) .pytest_cache
