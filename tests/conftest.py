"""Shared fixtures: every test session talks to a real Kubernetes API server.

Kubestep's correctness rests on API-server behaviour (CRD validation, RBAC,
garbage collection, watches), so nothing here mocks the Kubernetes API.

* By default the session starts its own local control plane
  (`kubestep_dev.controlplane.ControlPlane`: etcd + kube-apiserver + kube-controller-manager)
  in a private state directory on free ports, so it never collides with a
  user's `kubestep dev up` or with another test session, and stops it at the
  end. `KUBESTEP_KEEP_CLUSTER=1` leaves it running (and prints how to reuse it).
* With `KUBESTEP_TEST_KUBECONFIG=/path/to/kubeconfig` the session uses that
  existing cluster instead (the kind end-to-end path) and starts/stops nothing.

A missing control-plane binary fails the session loudly (no skips).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.errors import ControlPlaneError
from kubestep_dev.kubeconfigs import run_kubectl, write_token_kubeconfig
from kubestep_dev.locations import cache_dir, find_binary
from kubestep_dev.ports import Ports
from kubestep_dev.processes import pid_alive

from .harness import E2E, Proc, free_port, start_operator, start_worker, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
_OWNER_FILE = "owner.pid"
_KEEP_FILE = "keep"


@dataclass
class Cluster:
    """The Kubernetes cluster a test session runs against."""

    kubeconfig: Path
    kubectl_path: Path
    #: Private scratch directory (service-account kubeconfigs, kubectl cache).
    work_dir: Path
    #: The local control plane, or None when using KUBESTEP_TEST_KUBECONFIG.
    plane: ControlPlane | None = None
    _sa_counter: int = field(default=0, repr=False)

    @property
    def is_local(self) -> bool:
        return self.plane is not None

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (admin, unless `kubeconfig`); `check` raises KubectlError on failure."""
        return run_kubectl(
            self.kubectl_path,
            kubeconfig or self.kubeconfig,
            *args,
            input=input,
            check=check,
            timeout=timeout,
            cache_dir=self.work_dir / "kubectl-cache",
        )

    def kubeconfig_for_service_account(self, namespace: str, name: str) -> Path:
        """A kubeconfig authenticating as an existing ServiceAccount (bound token)."""
        self._sa_counter += 1
        path = self.work_dir / "kubeconfigs" / f"{namespace}-{name}-{self._sa_counter}.yaml"
        if self.plane is not None:
            return self.plane.kubeconfig_for_service_account(namespace, name, path)
        # External cluster: no admin client certificate to rely on, so ask
        # kubectl for the TokenRequest and copy server + CA from the kubeconfig.
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=24h")
        view = json.loads(self.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout)
        cluster = view["clusters"][0]["cluster"]
        import base64

        return write_token_kubeconfig(
            path,
            server=cluster["server"],
            ca_pem=base64.b64decode(cluster["certificate-authority-data"]),
            token=token.stdout.strip(),
            user=f"system:serviceaccount:{namespace}:{name}",
            namespace=namespace,
        )


# Lines for the end of the test report (fixture output is captured).
_SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _SUMMARY:
        terminalreporter.write_line(line)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# tests/pods needs the chart's pods on a real node (`make node-e2e`, hack/node/e2e.sh sets
# KUBESTEP_TEST_PODS): not collected otherwise.
collect_ignore = [] if _env_flag("KUBESTEP_TEST_PODS") else ["pods"]


def _reap_stale_test_planes(root: Path) -> None:
    """Stop planes left behind by test sessions that died (SIGKILL, timeout)."""
    for state_dir in root.glob("test-*"):
        if (state_dir / _KEEP_FILE).exists():
            continue
        try:
            owner = int((state_dir / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue  # another live session's plane
        with contextlib.suppress(ControlPlaneError, OSError):
            ControlPlane(state_dir, progress=None).down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[Cluster]:
    """The session's cluster: an existing one (KUBESTEP_TEST_KUBECONFIG) or a local plane."""
    old_kubeconfig = os.environ.get("KUBECONFIG")
    external = os.environ.get("KUBESTEP_TEST_KUBECONFIG")
    work_dir = Path(tempfile.mkdtemp(prefix="kubestep-test-"))
    plane: ControlPlane | None = None
    keep = _env_flag("KUBESTEP_KEEP_CLUSTER")
    try:
        if external:
            kubeconfig = Path(external).expanduser().resolve()
            if not kubeconfig.is_file():
                raise pytest.UsageError(f"KUBESTEP_TEST_KUBECONFIG={external}: no such file")
            cluster = Cluster(kubeconfig, find_binary("kubectl"), work_dir)
        else:
            root = cache_dir()
            root.mkdir(parents=True, exist_ok=True)
            _reap_stale_test_planes(root)
            state_dir = Path(tempfile.mkdtemp(prefix="test-", dir=root))
            (state_dir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
            plane = ControlPlane(state_dir, ports=Ports.free())
            try:
                plane.up()
            except BaseException:
                # Keep the state dir (logs) for a post-mortem; the next session
                # reaps it, since its owner will be gone by then.
                plane.down()
                raise
            cluster = Cluster(plane.kubeconfig, find_binary("kubectl"), work_dir, plane)
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        yield cluster
    finally:
        if old_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_kubeconfig
        if plane is not None:
            if keep:
                (plane.state_dir / _KEEP_FILE).touch()
                _SUMMARY.append(
                    f"KUBESTEP_KEEP_CLUSTER: control plane left running in {plane.state_dir}\n"
                    f"  reuse it: KUBESTEP_TEST_KUBECONFIG={plane.kubeconfig}\n"
                    f"  stop it:  kubestep dev down --purge --state-dir {plane.state_dir}"
                )
            else:
                plane.down(purge=True)
                shutil.rmtree(plane.state_dir, ignore_errors=True)
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
def make_namespace(control_plane: Cluster) -> Iterator[Callable[[], str]]:
    """Factory for fresh namespaces (`t-<uuid>`), deleted after the test (without waiting)."""
    created: list[str] = []

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        control_plane.kubectl("create", "namespace", name)
        created.append(name)
        return name

    yield make
    for name in created:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def namespace(make_namespace: Callable[[], str]) -> str:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    return make_namespace()


# ----- runs: the operator, workers and a client (on kind, the chart's pods) -----------------------


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def operator(control_plane: Any, logs: Path) -> Iterator[Proc | None]:
    if E2E:
        yield None  # the chart's operator runs in the cluster
        return
    proc = start_operator(
        control_plane.kubeconfig, logs, namespaces=["t-*"], env={"KUBESTEP_METRICS_PORT": str(free_port())}
    )
    yield proc
    proc.stop()


@pytest.fixture
def run_namespace(request: pytest.FixtureRequest) -> str:
    """Where runs are started: a fresh namespace locally; on kind, the chart's namespace,
    where the operator and the example workers run as pods."""
    if E2E:
        return os.environ["KUBESTEP_E2E_NAMESPACE"]
    return str(request.getfixturevalue("namespace"))


@pytest.fixture
def workers(control_plane: Any, run_namespace: str, logs: Path, operator: Any) -> Iterator[Callable[..., Proc | None]]:
    """Starts a worker process serving kubestep.examples (on kind: they already run as pods)."""
    started: list[Proc] = []

    def start(**kw: Any) -> Proc | None:
        if E2E:
            return None
        proc = start_worker(control_plane.kubeconfig, logs, run_namespace, **kw)
        started.append(proc)
        # Ready once its lease exists: from then on the operator knows what it serves.
        wait_until(
            lambda: (
                control_plane.kubectl(
                    "-n", run_namespace, "get", "lease", f"kubestep-worker-{proc.name}", check=False
                ).returncode
                == 0
            ),
            20,
            what=f"worker {proc.name}'s lease",
        )
        return proc

    yield start
    for proc in started:
        if proc.alive():
            proc.stop()


@pytest.fixture
async def client(control_plane: Any, run_namespace: str, operator: Any) -> AsyncIterator[KubestepClient]:
    async with KubestepClient(namespace=run_namespace, kubeconfig=str(control_plane.kubeconfig)) as c:
        yield c


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts itself (operators, workers): killed after the test, whatever happened."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.signal(signal.SIGKILL)
        p.stop(timeout=5)
