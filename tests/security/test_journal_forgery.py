"""Replay does not take a replaced journal ConfigMap for steps that ran (issue 17, finding 10).

Before: a user who may edit ConfigMaps (the built-in ``edit`` role) deleted a chunk of a waiting run's
journal and created another of the same name with forged outputs; when the run resumed, replay
returned them as the outputs of steps that ran, and the run completed on them. After: each chunk's
SHA-256 is in ``status.journal`` (which only the holder and the operator write), and the run ends
``Failed`` naming the replaced chunk.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._journal import DATA_KEY

from ..conftest import Cluster
from ..harness import E2E, until_phase

pytestmark = pytest.mark.skipif(E2E, reason="needs a worker with a small status window: local control plane")


async def test_a_replaced_journal_chunk_fails_the_run_instead_of_being_replayed(
    control_plane: Cluster, namespace: str, client: KubestepClient, workers: Any
) -> None:
    workers(env={"KUBESTEP_STATUS_STEPS": "2"})
    h = await client.start("steps", {"count": 6, "seconds": 0.05, "wait_after": 3, "wait_seconds": 4})
    e = await until_phase(client, h.id, api.Phase.WAITING, timeout=30)
    assert e.status.journal, e.status  # older step records went to ConfigMaps
    chunk = e.status.journal[0].config_map
    cm = json.loads(control_plane.kubectl("-n", namespace, "get", "configmap", chunk, "-o", "json").stdout)
    records = json.loads(cm["data"][DATA_KEY])
    for r in records:
        r["output"] = {**(r.get("output") or {}), "token": "forged"}
    forged = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "immutable": True,
        "metadata": {k: cm["metadata"][k] for k in ("name", "namespace", "labels", "ownerReferences")},
        "data": {DATA_KEY: json.dumps(records, separators=(",", ":"))},
    }
    control_plane.kubectl("-n", namespace, "delete", "configmap", chunk)
    control_plane.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(forged))

    e = await until_phase(client, h.id, api.Phase.FAILED, api.Phase.COMPLETED, timeout=60)
    assert "forged" not in json.dumps(e.status.result), e.status.result
    assert e.status.phase == api.Phase.FAILED, e.status
    assert chunk in (e.status.message or "") and "replaced" in (e.status.message or ""), e.status.message
