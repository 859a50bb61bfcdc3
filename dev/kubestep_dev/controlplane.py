"""Run etcd, kube-apiserver and kube-controller-manager as local processes.

Why local processes: Kubestep must be tested against the real API server
(CRD validation rules, RBAC, owner-reference garbage collection, watch
semantics) and a container engine is not always at hand. The binaries are
built from pinned sources by `make tools` (hack/controlplane/build.sh).

Design points:

* One state directory holds everything (certificates, etcd data, logs, pid
  files, the admin kubeconfig), so several planes (a user's `kubestep dev up`
  and any number of test sessions) can run side by side on different ports.
* Processes run detached (their own session) and are tracked by pid files;
  `down()` only signals a pid after checking its command line still names
  this binary and this state directory, so a recycled pid is never killed.
* `up()` is idempotent: on a healthy plane it returns in milliseconds.
* The CRDs are installed before the controller manager starts, so its
  garbage collector watches them from its first discovery pass instead of
  picking them up at its next periodic resync (up to 30 s later).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from .errors import ControlPlaneError, MissingBinaryError
from .kubeconfigs import CLUSTER_NAME, b64, run_kubectl, sh_quote, write_kubeconfig, write_token_kubeconfig
from .locations import default_crds_dir, default_state_dir, find_binary
from .ports import PORT_ENV_VARS, Ports, env_port, port_in_use
from .processes import pid_alive, proc_cmdline

if TYPE_CHECKING:
    from kubestep_dev.certs import Pki

ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
KUBECTL = "kubectl"
#: Components in start order.
COMPONENTS: tuple[str, ...] = (ETCD, APISERVER, CONTROLLER_MANAGER)
BINARIES: tuple[str, ...] = (*COMPONENTS, KUBECTL)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
ADVERTISE_ADDRESS_ENV = "KUBESTEP_DEV_ADVERTISE_ADDRESS"

# The state directory carries this file so `down(purge=True)` never deletes a
# directory it did not create.
_MARKER = ".kubestep-dev"
_TERM_GRACE_SECONDS = 10.0
# Everything `up()` may create in the state directory (what `down(purge=True)` deletes).
_STATE_ENTRIES = (
    "pki",
    "etcd",
    "logs",
    "run",
    "kubeconfigs",
    "kubectl-cache",
    "kubeconfig",
    "kubeconfig.tmp",
    "controller-manager.kubeconfig",
    "controller-manager.kubeconfig.tmp",
    "ports.json",
    "advertise-address",
    "crds.sha256",
    ".lock",
    _MARKER,
)


# --------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ComponentStatus:
    """What `status()` knows about one component."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str
    log: Path

    def describe(self) -> str:
        if not self.running:
            return f"{self.name:<24} down"
        health = "healthy" if self.healthy else "NOT healthy"
        return f"{self.name:<24} up (pid {self.pid}, {health}) {self.url}"


@dataclass(frozen=True)
class UpResult:
    """What `up()` did."""

    started: tuple[str, ...]
    seconds: float
    crds_applied: bool

    @property
    def was_running(self) -> bool:
        return not self.started


def refuse_a_route_out(route_tables: tuple[str, str] = ("/proc/net/route", "/proc/net/ipv6_route")) -> None:
    """An API server that listens on every address belongs in a network namespace with no route out.

    `--advertise-address` binds 0.0.0.0 so that pods reach it. In a namespace with a default route
    (the host's) that would expose it beyond the machine, so it is refused there: hack/node/up.sh runs
    it in the node's namespace, whose only routes are its own subnets. (Comparing with pid 1's
    namespace is not possible: /proc/1/ns is unreadable on some hosts, even to root.)
    """
    ipv4, ipv6 = route_tables
    try:
        v4 = [line.split() for line in Path(ipv4).read_text().splitlines()[1:]]
        v6 = [line.split() for line in Path(ipv6).read_text().splitlines()] if Path(ipv6).exists() else []
    except OSError as e:
        raise ControlPlaneError(f"--advertise-address: cannot read this namespace's routes ({e})") from e
    # IPv4: destination and mask 0; IPv6: destination ::/0 (prefix length 00), not the unreachable ones.
    default = [f[0] for f in v4 if len(f) > 7 and f[1] == "00000000" and f[7] == "00000000"]
    default += [f[-1] for f in v6 if len(f) > 9 and f[0] == "0" * 32 and f[1] == "00" and f[-1] != "lo"]
    if default:
        raise ControlPlaneError(
            f"--advertise-address listens on every address, and this network namespace has a default route "
            f"(via {', '.join(sorted(set(default)))}): run it in the node's namespace, which has none "
            "(hack/node/up.sh does)"
        )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ControlPlane:
    """A local Kubernetes control plane rooted in one state directory.

    Explicit constructor arguments win over environment variables, which win
    over the ports recorded by the last `up()` in this state directory, which
    win over the defaults (6443, 2379, 2380, 10257).
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        apiserver_port: int | None = None,
        etcd_client_port: int | None = None,
        etcd_peer_port: int | None = None,
        controller_manager_port: int | None = None,
        ports: Ports | None = None,
        crds_dir: Path | str | None = None,
        progress: Callable[[str], None] | None = _stderr,
        startup_timeout: float = 120.0,
        advertise_address: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
        self.crds_dir = Path(crds_dir).expanduser() if crds_dir else default_crds_dir()
        self.startup_timeout = startup_timeout
        self._progress = progress
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._crds_established_at: float | None = None
        self.ports = self._resolve_ports(
            ports,
            {
                "apiserver": apiserver_port,
                "etcd_client": etcd_client_port,
                "etcd_peer": etcd_peer_port,
                "controller_manager": controller_manager_port,
            },
        )
        self.advertise_address = self._resolve_advertise_address(advertise_address)

    def __repr__(self) -> str:
        return f"ControlPlane({str(self.state_dir)!r}, ports={self.ports!r})"

    # ---- layout ------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (client certificate in group system:masters)."""
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def pki(self) -> Pki:
        from kubestep_dev.certs import Pki, leaves

        extra = (self.advertise_address,) if self.advertise_address else ()
        return Pki(self.state_dir / "pki", leaves(extra))

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def log_file(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    def _pid_file(self, component: str) -> Path:
        return self.state_dir / "run" / f"{component}.pid"

    @property
    def _ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    @property
    def _advertise_file(self) -> Path:
        return self.state_dir / "advertise-address"

    @property
    def _crds_stamp(self) -> Path:
        return self.state_dir / "crds.sha256"

    @property
    def _controller_manager_kubeconfig(self) -> Path:
        return self.state_dir / "controller-manager.kubeconfig"

    @property
    def _kubectl_cache(self) -> Path:
        return self.state_dir / "kubectl-cache"

    def _resolve_advertise_address(self, explicit: str | None) -> str | None:
        """The address pods reach the API server at, for a plane with a node (hack/node/).

        None (the default): the API server listens on 127.0.0.1 only and the
        `kubernetes` Service has no endpoints, as nothing runs in a pod. Given
        (flag, then $KUBESTEP_DEV_ADVERTISE_ADDRESS, then the last `up`), it
        listens on every address of its network namespace, which must be the
        node's isolated one, and publishes this address as the Service's endpoint.
        """
        if explicit:
            return explicit
        if from_env := os.environ.get(ADVERTISE_ADDRESS_ENV):
            return from_env
        with contextlib.suppress(OSError):
            return self._advertise_file.read_text().strip() or None
        return None

    def _resolve_ports(self, ports: Ports | None, explicit: Mapping[str, int | None]) -> Ports:
        if ports is not None:
            return ports
        values: dict[str, int] = Ports().as_dict()
        with contextlib.suppress(OSError, ValueError, TypeError):
            saved = json.loads((self.state_dir / "ports.json").read_text())
            values.update({k: int(saved[k]) for k in values if k in saved})
        for key, env in PORT_ENV_VARS.items():
            from_env = env_port(env)
            if from_env is not None:
                values[key] = from_env
        values.update({k: v for k, v in explicit.items() if v is not None})
        return Ports(**values)

    # ---- public API --------------------------------------------------------

    def up(self) -> UpResult:
        """Start whatever is not running, wait until ready, install the CRDs.

        Returns quickly when the plane is already up and healthy.
        """
        started_at = time.monotonic()
        binaries = {name: find_binary(name) for name in BINARIES}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if all(self._running_pid(c) for c in COMPONENTS) and self._apiserver_ready():
                applied = self._ensure_crds(binaries[KUBECTL])
                self._settle_new_crds()
                return UpResult((), time.monotonic() - started_at, applied)
            return self._up_locked(binaries, started_at)

    def down(self, *, purge: bool = False) -> list[str]:
        """Stop the components this state directory started; return their names.

        With `purge`, also delete the state directory (certificates, etcd data,
        logs), so the next `up()` is a cold start.
        """
        stopped: list[str] = []
        if not self.state_dir.exists():
            return stopped
        with self._lock():
            # The API server and controller manager first (together), etcd last,
            # so the API server does not spend its shutdown retrying storage.
            for group in ((CONTROLLER_MANAGER, APISERVER), (ETCD,)):
                signalled = {c: pid for c in group if (pid := self._running_pid(c))}
                for pid in signalled.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                for component, pid in signalled.items():
                    self._wait_exit(component, pid)
                    stopped.append(component)
                for component in group:
                    self._pid_file(component).unlink(missing_ok=True)
                    self._procs.pop(component, None)
        if purge:
            self._purge()
        return stopped

    def _purge(self) -> None:
        """Delete what `up()` created (only that, in case the directory is shared)."""
        if not (self.state_dir / _MARKER).exists():
            return
        for name in _STATE_ENTRIES:
            path = self.state_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()  # only if now empty

    def status(self) -> dict[str, ComponentStatus]:
        """Each component's pid, whether it runs, and whether it answers its health check."""
        urls = {
            ETCD: f"http://127.0.0.1:{self.ports.etcd_client}/health",
            APISERVER: f"{self.server}/readyz",
            CONTROLLER_MANAGER: f"https://127.0.0.1:{self.ports.controller_manager}/healthz",
        }
        result: dict[str, ComponentStatus] = {}
        for component in COMPONENTS:
            pid = self._running_pid(component)
            healthy = bool(pid) and self._healthy(component, timeout=2.0)
            result[component] = ComponentStatus(
                component, pid, pid is not None, healthy, urls[component], self.log_file(component)
            )
        return result

    def env(self) -> str:
        """Shell lines that point kubectl (and Kubestep) at this plane."""
        lines = [f"export KUBECONFIG={sh_quote(str(self.kubeconfig))}"]
        with contextlib.suppress(MissingBinaryError):
            bin_dir = find_binary(KUBECTL).parent
            lines.append(f'export PATH={sh_quote(str(bin_dir))}:"$PATH"')
        return "\n".join(lines) + "\n"

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this plane (admin unless `kubeconfig`)."""
        return run_kubectl(
            find_binary(KUBECTL),
            kubeconfig or self.kubeconfig,
            *args,
            input=input,
            check=check,
            timeout=timeout,
            cache_dir=self._kubectl_cache,
        )

    def kubeconfig_for_service_account(
        self,
        namespace: str,
        name: str,
        path: Path | str | None = None,
        *,
        expiration_seconds: int = 24 * 3600,
        pod: str | None = None,
    ) -> Path:
        """Write a kubeconfig that authenticates as an existing ServiceAccount.

        Requests a bound token through the TokenRequest API (as the admin) and
        writes it with the cluster CA. The context's namespace is `namespace`.
        With ``pod``, the token is bound to a Pod of that name, as a pod's
        projected token is (the chart's worker admission policy reads the pod's
        name from it): a stand-in Pod that never runs (a scheduling gate keeps
        it off every node) is created for a local worker posing as that pod.
        """
        target = (
            Path(path) if path is not None else self.state_dir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        )
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        with self._client(timeout=30.0) as client:
            if pod is not None:
                spec["boundObjectRef"] = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod,
                    "uid": self._stand_in_pod(client, namespace, pod, name),
                }
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
            url = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
            response = client.post(url, json=body)
        if response.status_code != 201:
            raise ControlPlaneError(
                f"TokenRequest for serviceaccount {namespace}/{name} failed: "
                f"HTTP {response.status_code} {response.text.strip()}"
            )
        token = response.json()["status"]["token"]
        write_token_kubeconfig(
            target,
            server=self.server,
            ca_pem=self.pki.ca_cert.read_bytes(),
            token=token,
            user=f"system:serviceaccount:{namespace}:{name}",
            namespace=namespace,
        )
        return target

    @staticmethod
    def _stand_in_pod(client: httpx.Client, namespace: str, name: str, service_account: str) -> str:
        """The uid of Pod ``name``, created gated (never scheduled, never pulled) if missing."""
        path = f"/api/v1/namespaces/{namespace}/pods"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "schedulingGates": [{"name": "kubestep.io/stand-in"}],
                "serviceAccountName": service_account,
                "automountServiceAccountToken": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "stand-in",
                        "image": "kubestep:stand-in",
                        "imagePullPolicy": "Never",
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    }
                ],
            },
        }
        created = client.post(path, json=body)
        if created.status_code == 409:
            created = client.get(f"{path}/{name}")
        if created.status_code not in (200, 201):
            raise ControlPlaneError(
                f"stand-in pod {namespace}/{name}: HTTP {created.status_code} {created.text.strip()}"
            )
        return str(created.json()["metadata"]["uid"])

    # ---- starting ----------------------------------------------------------

    def _up_locked(self, binaries: Mapping[str, Path], started_at: float) -> UpResult:
        from kubestep_dev import certs

        try:
            import cryptography  # noqa: F401  (certs imports it lazily)
        except ImportError as e:
            raise ControlPlaneError(
                f"generating the control plane's certificates needs the dev extra: pip install 'kubestep[dev]' ({e})"
            ) from e

        (self.state_dir / _MARKER).touch()
        for sub in ("run", "logs", "etcd"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir / "etcd", 0o700)
        self._check_ports_consistent()
        if self.advertise_address:
            refuse_a_route_out()
        pki = certs.ensure_pki(self.pki.dir, self.pki.leaves)
        if self.advertise_address:
            self._advertise_file.write_text(self.advertise_address + "\n")
        else:
            self._advertise_file.unlink(missing_ok=True)
        self._write_kubeconfigs(pki)
        started: list[str] = []

        # etcd and the API server start together (the API server retries its
        # storage connection), which saves etcd's half-second startup.
        if not self._running_pid(ETCD):
            self._start(ETCD, self._etcd_argv(binaries[ETCD]), [self.ports.etcd_client, self.ports.etcd_peer])
            started.append(ETCD)
        if not self._running_pid(APISERVER):
            self._start(APISERVER, self._apiserver_argv(binaries[APISERVER], pki), [self.ports.apiserver])
            started.append(APISERVER)
        self._wait(ETCD, "etcd /health")
        self._wait(APISERVER, "kube-apiserver /readyz")

        applied = self._ensure_crds(binaries[KUBECTL])

        if not self._running_pid(CONTROLLER_MANAGER):
            self._start(
                CONTROLLER_MANAGER,
                self._controller_manager_argv(binaries[CONTROLLER_MANAGER], pki),
                [self.ports.controller_manager],
            )
            started.append(CONTROLLER_MANAGER)
        self._wait(CONTROLLER_MANAGER, "kube-controller-manager /healthz")
        self._settle_new_crds()
        return UpResult(tuple(started), time.monotonic() - started_at, applied)

    def _check_ports_consistent(self) -> None:
        """Refuse to mix components of one state dir across different ports."""
        try:
            saved = json.loads(self._ports_file.read_text())
        except (OSError, ValueError):
            saved = None
        if saved and saved != self.ports.as_dict() and any(self._running_pid(c) for c in COMPONENTS):
            raise ControlPlaneError(
                f"the control plane in {self.state_dir} is partly running on ports {saved}; "
                f"run `kubestep dev down` before changing ports to {self.ports.as_dict()}"
            )
        self._ports_file.write_text(json.dumps(self.ports.as_dict(), indent=2) + "\n")

    def _etcd_argv(self, binary: Path) -> list[str]:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [
            str(binary),
            "--name=kubestep",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kubestep={peer}",
            "--initial-cluster-state=new",
            # A throwaway development store: skipping fsync makes writes (and
            # so every test) much faster; a host crash may lose the data.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_argv(self, binary: Path, pki: Pki) -> list[str]:
        if self.advertise_address:
            # With a node: pods reach the API server through the `kubernetes`
            # Service (its endpoint is this address), and the API server reaches
            # the kubelet (logs, exec) with the admin certificate.
            listen = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.advertise_address}",
                f"--kubelet-client-certificate={pki.cert('admin')}",
                f"--kubelet-client-key={pki.key('admin')}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            # The `kubernetes` Service cannot point at 127.0.0.1 (Endpoints reject
            # loopback addresses) and nothing runs in-cluster here anyway.
            listen = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            f"--secure-port={self.ports.apiserver}",
            *listen,
            "--authorization-mode=Node,RBAC",
            f"--client-ca-file={pki.ca_cert}",
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            # Default admission plugins (PodSecurity, ServiceAccount, ...) stay on, and so does
            # API Priority and Fairness, as in every real cluster (the chart ships FlowSchemas).
            "--profiling=true",  # /debug/pprof, admin only: for finding where a benchmark spends time
            # MutatingAdmissionPolicy (beta, off by default before 1.36): the chart's optional
            # cancelAudit policy records who cancels a run, and the tests check it.
            "--feature-gates=MutatingAdmissionPolicy=true",
            "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
        ]

    def _controller_manager_argv(self, binary: Path, pki: Pki) -> list[str]:
        kubeconfig = self._controller_manager_kubeconfig
        return [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--tls-cert-file={pki.cert('controller-manager-serving')}",
            f"--tls-private-key-file={pki.key('controller-manager-serving')}",
            f"--client-ca-file={pki.ca_cert}",
            "--controllers=*",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            # Each controller acts as its own kube-system service account, as in
            # kubeadm clusters. With `false` they would all act as
            # system:kube-controller-manager, whose bootstrap role may not
            # delete objects, so e.g. the garbage collector could not cascade.
            "--use-service-account-credentials=true",
            # The client CA is given above; don't also read the front-proxy
            # (requestheader) CA from the cluster, which this plane lacks.
            "--authentication-skip-lookup=true",
            "--leader-elect=false",
            f"--cluster-name={CLUSTER_NAME}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            "--profiling=true",  # /debug/pprof, admin only: for finding where a benchmark spends time
        ]

    def _write_kubeconfigs(self, pki: Pki) -> None:
        ca = pki.ca_cert.read_bytes()
        write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_pem=ca,
            user="kubestep-admin",
            credentials={
                "client-certificate-data": b64(pki.cert("admin").read_bytes()),
                "client-key-data": b64(pki.key("admin").read_bytes()),
            },
        )
        write_kubeconfig(
            self._controller_manager_kubeconfig,
            server=self.server,
            ca_pem=ca,
            user="system:kube-controller-manager",
            credentials={
                "client-certificate-data": b64(pki.cert("controller-manager").read_bytes()),
                "client-key-data": b64(pki.key("controller-manager").read_bytes()),
            },
        )

    def _start(self, component: str, argv: Sequence[str], ports: Sequence[int]) -> None:
        for port in ports:
            if port_in_use(port):
                raise ControlPlaneError(
                    f"cannot start {component}: 127.0.0.1:{port} is already in use "
                    "(another `kubestep dev` plane or a real cluster?). Pick other ports with "
                    + ", ".join(f"${v}" for v in PORT_ENV_VARS.values())
                )
        log_path = self.log_file(component)
        if log_path.exists():
            log_path.replace(log_path.with_name(log_path.name + ".1"))
        with open(log_path, "ab") as log:
            log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,
                close_fds=True,
            )
        self._procs[component] = proc
        record = {"pid": proc.pid, "argv": list(argv), "started": time.time()}
        pid_file = self._pid_file(component)
        tmp = pid_file.with_name(pid_file.name + ".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(pid_file)

    def _wait(self, component: str, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        start = time.monotonic()
        announced = False
        delay = 0.05
        while True:
            if self._healthy(component, timeout=2.0):
                if announced:
                    self._say(f"{what}: ok after {time.monotonic() - start:.1f} s")
                return
            if not self._running_pid(component):
                raise ControlPlaneError(
                    f"{component} exited during startup; last lines of {self.log_file(component)}:\n"
                    + self._log_tail(component)
                )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{component} not ready after {self.startup_timeout:.0f} s"
                    + self._readyz_detail(component)
                    + f"; last lines of {self.log_file(component)}:\n"
                    + self._log_tail(component)
                )
            if not announced and time.monotonic() - start > 0.5:
                self._say(f"waiting for {what} ...")
                announced = True
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    def _log_tail(self, component: str, lines: int = 30) -> str:
        try:
            text = self.log_file(component).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _readyz_detail(self, component: str) -> str:
        if component != APISERVER:
            return ""
        try:
            with self._client(timeout=5.0) as client:
                r = client.get("/readyz", params={"verbose": "1"})
        except httpx.HTTPError as e:
            return f" ({e})"
        failing = [line for line in r.text.splitlines() if "failed" in line]
        return f" (failing readyz checks: {'; '.join(failing) or r.text.strip()[:500]})"

    # ---- health ------------------------------------------------------------

    def _ssl_context(self, *, client_cert: bool = True) -> ssl.SSLContext:
        pki = self.pki
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        if client_cert:
            ctx.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
        return ctx

    def _client(self, *, timeout: float) -> httpx.Client:
        """An httpx client for the API server, authenticated as the admin."""
        return httpx.Client(base_url=self.server, verify=self._ssl_context(), timeout=timeout)

    def _apiserver_ready(self, timeout: float = 2.0) -> bool:
        return self._healthy(APISERVER, timeout=timeout)

    def _healthy(self, component: str, *, timeout: float) -> bool:
        try:
            if component == ETCD:
                r = httpx.get(f"http://127.0.0.1:{self.ports.etcd_client}/health", timeout=timeout)
                return r.status_code == 200 and r.json().get("health") == "true"
            if not self.pki.ca_cert.exists():
                return False
            if component == APISERVER:
                with self._client(timeout=timeout) as client:
                    return client.get("/readyz").status_code == 200
            if component == CONTROLLER_MANAGER:
                r = httpx.get(
                    f"https://127.0.0.1:{self.ports.controller_manager}/healthz",
                    verify=self._ssl_context(),
                    timeout=timeout,
                )
                return r.status_code == 200
        except (httpx.HTTPError, ValueError, ssl.SSLError, OSError):
            return False
        raise ValueError(f"unknown component {component!r}")

    def _running_pid(self, component: str) -> int | None:
        """The pid from our pid file, if that process is alive and is really ours."""
        proc = self._procs.get(component)
        if proc is not None:
            # Started by this process: poll() is authoritative. (Right after
            # exec, /proc/PID/cmdline can briefly read empty, so the command
            # line check below would wrongly fail.)
            return proc.pid if proc.poll() is None else None
        try:
            record = json.loads(self._pid_file(component).read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not pid_alive(pid):
            return None
        cmdline = proc_cmdline(pid)
        if not cmdline or Path(cmdline[0]).name != component:
            return None
        marker = str(self.state_dir) + os.sep
        if not any(marker in arg for arg in cmdline[1:]):
            return None
        return pid

    def _wait_exit(self, component: str, pid: int) -> None:
        proc = self._procs.get(component)
        deadline = time.monotonic() + _TERM_GRACE_SECONDS
        while time.monotonic() < deadline:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
                    return
            elif not pid_alive(pid):
                return
            else:
                time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
        else:
            while pid_alive(pid):
                time.sleep(0.05)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down on one state directory (two shells, two test runs)."""
        with open(self.state_dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- CRDs --------------------------------------------------------------

    def _crd_files(self) -> list[Path]:
        if self.crds_dir is None:
            return []
        if not self.crds_dir.is_dir():
            raise ControlPlaneError(f"CRD directory {self.crds_dir} does not exist")
        return sorted(p for p in self.crds_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())

    def _ensure_crds(self, kubectl: Path) -> bool:
        """Apply the CRDs unless this exact set is already installed; wait until Established.

        Returns whether kubectl apply ran.
        """
        files = self._crd_files()
        if not files:
            if self.crds_dir is None:
                self._say(
                    "no crds/ directory found next to the kubestep sources; "
                    "set $KUBESTEP_CRDS_DIR to install the Kubestep CRDs"
                )
            return False
        digest = hashlib.sha256()
        names: list[str] = []
        for path in files:
            content = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + content + b"\0")
            for doc in yaml.safe_load_all(content):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    names.append(str(doc["metadata"]["name"]))
        stamp = digest.hexdigest()
        with contextlib.suppress(OSError):
            if self._crds_stamp.read_text().strip() == stamp:
                established_at = self._crds_established(names)
                if established_at is not None:
                    # lastTransitionTime is truncated to whole seconds; keep
                    # the precise time if this object saw them get Established.
                    bound = established_at + 1.0
                    if self._crds_established_at is None or self._crds_established_at > bound:
                        self._crds_established_at = bound
                    return False
        self._say(f"applying CRDs from {self.crds_dir} ...")
        run_kubectl(
            kubectl,
            self.kubeconfig,
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=kubestep-dev",
            *(arg for path in files for arg in ("-f", str(path))),
            cache_dir=self._kubectl_cache,
        )
        deadline = time.monotonic() + 60.0
        while (established_at := self._crds_established(names)) is None:
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRDs not Established after 60 s: {names}")
            time.sleep(0.1)
        # Seen Established now; the truncated lastTransitionTime bounds it too.
        self._crds_established_at = min(time.time(), established_at + 1.0)
        self._crds_stamp.write_text(stamp + "\n")
        return True

    def _crds_established(self, names: Sequence[str]) -> float | None:
        """If all named CRDs are Established, when the last one became so (epoch s)."""
        latest = 0.0
        with self._client(timeout=10.0) as client:
            for name in names:
                r = client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                if r.status_code != 200:
                    return None
                # A brand-new CRD can have `status: {conditions: null}`.
                conditions = (r.json().get("status") or {}).get("conditions") or []
                established = [c for c in conditions if c.get("type") == "Established" and c.get("status") == "True"]
                if not established:
                    return None
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    when = dt.datetime.fromisoformat(established[0]["lastTransitionTime"])
                    latest = max(latest, when.timestamp())
        return latest

    def _settle_new_crds(self) -> None:
        """Let the API server's "just created" window for new CRDs pass.

        For 2 s after a CRD becomes Established the API server delays every
        create of its resources by 2 s (apiextensions-apiserver
        customresource_handler.go, for HA consistency). Waiting it out here
        keeps that hidden delay out of the first test or the first
        `kubectl apply`.
        """
        if self._crds_established_at is None:
            return
        remaining = self._crds_established_at + 2.05 - time.time()
        if 0 < remaining <= 3.0:
            time.sleep(remaining)
