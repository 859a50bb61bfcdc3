"""``kubestep server`` at 10,000 runs (issue 20, item 7), on a fresh local plane, loopback only.

N runs are created directly as WorkflowExecutions in one namespace (no operator, no workers: they
keep no phase, which costs the server the same as any other). Then, for the server without the
cache (every list made on the apiserver with the caller's token) and with it (``--cache all``: one
watch, lists answered from memory), each started as the ``kubestep server`` command:

* how long until it answers from its cache (with it), and its RSS and CPU seconds then (``/proc``);
* the time to the first page, as the UI asks for it (``?order=newest&limit=100``) and as kubectl
  does (``?limit=500``), p50 and p99 over ``--requests`` requests of a reader's token (a
  ServiceAccount bound to a Role that may get, list and watch runs);
* with the cache: ``--streams`` namespace streams open (``?watch=true&snapshot=false``, as the UI
  opens them), RSS and CPU again, the first page again, and how long one change takes to reach
  every stream (a label patched on a run, until each stream has its message), p50 and p99 over
  ``--changes`` changes.

Without the cache, streams are not opened: each would list all N runs and hold a watch of its own
(that is what the cache removes), and a hundred of them would measure the apiserver, not the
server. Results: ``bench/results/server_load.json`` and ``server_load.md``.

    python bench/server_load.py [--runs 10000] [--streams 100] [--requests 50] [--changes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from kubestep._kube import Kube
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import Proc
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent
LOGS = HERE / "results" / "logs"
WFX = "/apis/kubestep.io/v1alpha1/namespaces/{ns}/workflowexecutions"
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / TICKS, 2)  # utime + stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def populate(kube: Kube, ns: str, n: int) -> None:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        body = {
            "apiVersion": "kubestep.io/v1alpha1",
            "kind": "WorkflowExecution",
            "metadata": {"name": f"run-{i:05d}", "labels": {"team": f"t{i % 10}"}},
            "spec": {"workflow": f"wf-{i % 7}", "input": {"i": i, "day": "2026-12-02"}, "runTimeoutSeconds": 600},
        }
        async with gate:
            await kube.create(WFX.format(ns=ns), body)

    await asyncio.gather(*(one(i) for i in range(n)))


async def reader_token(kube: Kube, ns: str) -> str:
    await kube.create(
        f"/api/v1/namespaces/{ns}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
    )
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + ns
    rule = {"apiGroups": ["kubestep.io"], "resources": ["workflowexecutions"], "verbs": ["get", "list", "watch"]}
    await kube.create(f"{rbac}/roles", {"kind": "Role", "metadata": {"name": "reader"}, "rules": [rule]})
    await kube.create(
        f"{rbac}/rolebindings",
        {
            "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    answer = await kube.create(
        f"/api/v1/namespaces/{ns}/serviceaccounts/reader/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 7200}},
    )
    return str(answer["status"]["token"])


async def timed_pages(http: aiohttp.ClientSession, base: str, query: str, n: int) -> dict[str, Any]:
    took: list[float] = []
    source = ""
    items = 0
    for _ in range(n):
        t = time.perf_counter()
        async with http.get(f"{base}/api/v1/executions?{query}") as r:
            body = await r.read()
            assert r.status == 200, (r.status, body[:300])
            source = r.headers.get("X-Kubestep-Source", "")
        took.append(time.perf_counter() - t)
        items = len(json.loads(body)["items"])
    return {"p50_ms": pct(took, 0.5), "p99_ms": pct(took, 0.99), "items": items, "source": source, "bytes": len(body)}


async def open_streams(http: aiohttp.ClientSession, base: str, ns: str, n: int) -> list[aiohttp.ClientResponse]:
    streams = []
    for _ in range(n):
        r = await http.get(
            f"{base}/api/v1/executions?namespace={ns}&watch=true&snapshot=false",
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        assert r.status == 200, r.status
        await r.content.readuntil(b"\n\n")  # retry:
        streams.append(r)
    return streams


async def fan_out(kube: Kube, ns: str, streams: list[aiohttp.ClientResponse], changes: int) -> dict[str, Any]:
    """How long a change takes to reach every stream: a label patched, until each has its message."""
    took: list[float] = []
    for i in range(changes):
        name = f"run-{i:05d}"
        t = time.perf_counter()
        await kube.merge_patch(f"{WFX.format(ns=ns)}/{name}", {"metadata": {"labels": {"bench": str(i)}}})

        marks = (f'"id":"{name}"'.encode(), f'"bench":"{i}"'.encode())
        await asyncio.wait_for(asyncio.gather(*(_seen(r, marks) for r in streams)), 60)
        took.append(time.perf_counter() - t)
    return {"p50_ms": pct(took, 0.5), "p99_ms": pct(took, 0.99)}


async def _seen(r: aiohttp.ClientResponse, marks: tuple[bytes, bytes]) -> None:
    while True:
        message = await r.content.readuntil(b"\n\n")
        if all(m in message for m in marks):
            return


async def one_server(plane: ControlPlane, ns: str, token: str, cache: bool, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, "-m", "kubestep._cli", "server", "--host", "127.0.0.1", "--port", str(port), "-n", ns]
    argv += ["--max-streams", str(args.streams + 10)] + (["--cache", "all"] if cache else [])
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "PYTHONUNBUFFERED": "1"}
    proc = Proc(f"server-{'cache' if cache else 'nocache'}", argv, env, LOGS / f"server-{uuid.uuid4().hex[:6]}.log")
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"cache": cache}
    headers = {"Authorization": f"Bearer {token}"}
    try:
        # No connection limit: the streams hold one each, and the pages measured beside them need more.
        async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as http:
            t0 = time.monotonic()
            while True:  # ready: answering, and with the cache, from it
                if time.monotonic() - t0 > 600 or not proc.alive():
                    raise TimeoutError(f"the server did not become ready: {proc.tail()}")
                try:
                    async with http.get(f"{base}/api/v1/executions?limit=1") as r:
                        if r.status == 200 and (not cache or r.headers.get("X-Kubestep-Source") == "cache"):
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            out["ready_s"] = round(time.monotonic() - t0, 1)
            await asyncio.sleep(2)
            out["idle_rss_mb"], out["cpu_s_at_ready"] = rss_mb(proc.pid), cpu_seconds(proc.pid)
            out["first_page_newest_100"] = await timed_pages(http, base, "order=newest&limit=100", args.requests)
            out["first_page_500"] = await timed_pages(http, base, "limit=500", args.requests)
            out["rss_after_pages_mb"] = rss_mb(proc.pid)
            if cache:
                streams = await open_streams(http, base, ns, args.streams)
                try:
                    await asyncio.sleep(2)
                    out["streams"] = args.streams
                    out["rss_with_streams_mb"] = rss_mb(proc.pid)
                    cpu = cpu_seconds(proc.pid)
                    await asyncio.sleep(10)
                    out["cpu_s_per_10s_idle_with_streams"] = round(cpu_seconds(proc.pid) - cpu, 2)
                    out["first_page_newest_100_with_streams"] = await timed_pages(
                        http, base, "order=newest&limit=100", args.requests
                    )
                    async with Kube(str(plane.kubeconfig)) as kube:
                        out["change_to_every_stream"] = await fan_out(kube, ns, streams, args.changes)
                    out["rss_end_mb"] = rss_mb(proc.pid)
                finally:
                    for r in streams:
                        r.close()
            out["cpu_s_end"] = cpu_seconds(proc.pid)
    finally:
        proc.stop()
    return out


async def measure(plane: ControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    ns = f"load-{uuid.uuid4().hex[:4]}"
    async with Kube(str(plane.kubeconfig)) as kube:
        await kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        t = time.monotonic()
        await populate(kube, ns, args.runs)
        created = round(time.monotonic() - t, 1)
        token = await reader_token(kube, ns)
    print(f"{args.runs} runs created in {created} s", flush=True)
    results: dict[str, Any] = {"runs": args.runs, "created_s": created, "cpus": os.cpu_count()}
    for cache in (False, True):
        row = await one_server(plane, ns, token, cache, args)
        print(json.dumps(row), flush=True)
        results["cache" if cache else "no_cache"] = row
    return results


def table(r: dict[str, Any]) -> str:
    n, c = r["no_cache"], r["cache"]
    lines = [
        f"# kubestep server at {r['runs']} runs ({r['cpus']} cores, shared with the control plane)",
        "",
        "| | without the cache | with `--cache all` |",
        "|---|---:|---:|",
        f"| ready (answering; from the cache) | {n['ready_s']} s | {c['ready_s']} s |",
        f"| RSS when ready | {n['idle_rss_mb']} MB | {c['idle_rss_mb']} MB |",
        f"| CPU seconds used until ready | {n['cpu_s_at_ready']} | {c['cpu_s_at_ready']} |",
    ]
    for key, label in (("first_page_newest_100", "first page, newest 100"), ("first_page_500", "a page of 500")):
        lines.append(
            f"| {label}, p50 / p99 | {n[key]['p50_ms']} / {n[key]['p99_ms']} ms | "
            f"{c[key]['p50_ms']} / {c[key]['p99_ms']} ms |"
        )
    lines += [
        f"| {c['streams']} namespace streams open: RSS | — | {c['rss_with_streams_mb']} MB |",
        f"| CPU seconds per 10 s, idle, with the streams | — | {c['cpu_s_per_10s_idle_with_streams']} |",
        f"| first page (newest 100) with the streams, p50 / p99 | — | "
        f"{c['first_page_newest_100_with_streams']['p50_ms']} / {c['first_page_newest_100_with_streams']['p99_ms']} ms |",
        f"| one change to all {c['streams']} streams, p50 / p99 | — | "
        f"{c['change_to_every_stream']['p50_ms']} / {c['change_to_every_stream']['p99_ms']} ms |",
        f"| RSS at the end | {n['rss_after_pages_mb']} MB | {c['rss_end_mb']} MB |",
        f"| CPU seconds at the end | {n['cpu_s_end']} | {c['cpu_s_end']} |",
        "",
        "Without the cache, `order=newest` is applied to one apiserver page only (the apiserver cannot order by"
        " age), so its first page is not the namespace's newest runs; the cache's is.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--changes", type=int, default=20)
    args = ap.parse_args()
    plane = ControlPlane(state_dir=Path(f"/tmp/kubestep-srv-{uuid.uuid4().hex[:6]}"), ports=Ports.free(), progress=None)
    plane.up()
    try:
        results = asyncio.run(measure(plane, args))
    finally:
        plane.down(purge=True)
    (HERE / "results").mkdir(exist_ok=True)
    results["at"] = time.strftime("%Y-%m-%d %H:%MZ", time.gmtime())
    (HERE / "results" / "server_load.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (HERE / "results" / "server_load.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
