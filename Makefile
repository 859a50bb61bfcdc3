# Kubestep developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
KIND_CLUSTER ?= kubestep-e2e
IMAGE  ?= kubestep:dev

.PHONY: help venv tools test unit demo bench kind-e2e lint clean

help:
	@echo "make test      set up (venv + control-plane tools) and run the whole suite on a local control plane"
	@echo "make demo      set up and run the demo on the local control plane"
	@echo "make bench     cancel-latency and timeout-overshoot benchmark (writes bench/results/)"
	@echo "make kind-e2e  the same suite against a kind cluster (needs docker + kind)"

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

test: venv tools
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest tests/unit

demo: venv tools
	$(BIN)/python -m kubestep_demo

bench: venv tools
	$(BIN)/python bench/cancel_latency.py

lint: venv tools
	$(HOME)/.cache/kubestep/bin/helm lint charts/kubestep

# kind end to end: cannot run on machines without a container engine.
kind-e2e: venv
	kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	trap 'kind delete cluster --name $(KIND_CLUSTER)' EXIT; \
	docker build -t $(IMAGE) . && \
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER) && \
	helm install kubestep charts/kubestep --namespace kubestep --create-namespace --wait \
	  --set image.repository=$(IMAGE:%:dev=%) --set image.tag=dev --set image.pullPolicy=Never \
	  -f charts/kubestep/ci/kind-values.yaml && \
	KUBESTEP_TEST_KUBECONFIG=$$(kind get kubeconfig-path 2>/dev/null || echo $$HOME/.kube/config) \
	KUBESTEP_E2E_NAMESPACE=kubestep $(BIN)/pytest -m e2e tests

clean:
	rm -rf $(VENV) .pytest_cache
