"""`kubestep dev up --advertise-address`: the plane a real node's pods can reach (hack/node/)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from kubestep_dev import certs
from kubestep_dev.controlplane import ADVERTISE_ADDRESS_ENV, ControlPlane, refuse_a_route_out
from kubestep_dev.errors import ControlPlaneError

NODE_IP = "10.77.0.1"


def _argv(plane: ControlPlane) -> list[str]:
    return plane._apiserver_argv(Path("kube-apiserver"), plane.pki)


def test_without_a_node_the_apiserver_listens_on_loopback_and_publishes_no_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADVERTISE_ADDRESS_ENV, raising=False)
    argv = _argv(ControlPlane(tmp_path, progress=None))
    assert "--bind-address=127.0.0.1" in argv and "--endpoint-reconciler-type=none" in argv
    assert not any(a.startswith("--kubelet-client-certificate") for a in argv)


def test_with_a_node_address_pods_reach_it_through_the_kubernetes_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADVERTISE_ADDRESS_ENV, raising=False)
    plane = ControlPlane(tmp_path, progress=None, advertise_address=NODE_IP)
    argv = _argv(plane)
    assert "--bind-address=0.0.0.0" in argv and f"--advertise-address={NODE_IP}" in argv
    assert "--endpoint-reconciler-type=none" not in argv  # the Service gets NODE_IP as its endpoint
    assert any(a.startswith("--kubelet-client-certificate=") for a in argv)  # kubectl logs / exec
    apiserver = next(leaf for leaf in plane.pki.leaves if leaf.name == "apiserver")
    assert NODE_IP in apiserver.ips and "10.0.0.1" in apiserver.ips


def test_the_address_comes_from_the_environment_else_the_last_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADVERTISE_ADDRESS_ENV, "10.1.2.3")
    assert ControlPlane(tmp_path, progress=None).advertise_address == "10.1.2.3"
    monkeypatch.delenv(ADVERTISE_ADDRESS_ENV)
    (tmp_path / "advertise-address").write_text(NODE_IP + "\n")
    assert ControlPlane(tmp_path, progress=None).advertise_address == NODE_IP
    assert ControlPlane(tmp_path, progress=None, advertise_address="10.9.9.9").advertise_address == "10.9.9.9"


def test_the_serving_certificate_names_the_node_address(tmp_path: Path) -> None:
    pki = certs.ensure_pki(tmp_path, certs.leaves((NODE_IP,)))
    cert = x509.load_pem_x509_certificate(pki.cert("apiserver").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(NODE_IP) in san.get_values_for_type(x509.IPAddress)
    # Without it (a plane that was a node's before), the certificate is re-issued without the address.
    pki = certs.ensure_pki(tmp_path)
    cert = x509.load_pem_x509_certificate(pki.cert("apiserver").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(NODE_IP) not in san.get_values_for_type(x509.IPAddress)


HOST_V4 = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
NODE_V4 = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
ksnode0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
V6_LOOPBACK_ONLY = (
    "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000000 00000001 00000000 00000001       lo\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
)
V6_DEFAULT = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n"
)


def _tables(tmp_path: Path, v4: str, v6: str) -> tuple[str, str]:
    (tmp_path / "route").write_text(v4)
    (tmp_path / "ipv6_route").write_text(v6)
    return str(tmp_path / "route"), str(tmp_path / "ipv6_route")


def test_a_node_address_is_refused_where_there_is_a_route_out(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError, match="default route \\(via eth0\\)"):
        refuse_a_route_out(_tables(tmp_path, HOST_V4, V6_LOOPBACK_ONLY))
    with pytest.raises(ControlPlaneError, match="default route \\(via eth0\\)"):
        refuse_a_route_out(_tables(tmp_path, NODE_V4, V6_DEFAULT))
    refuse_a_route_out(_tables(tmp_path, NODE_V4, V6_LOOPBACK_ONLY))  # the node's namespace: allowed
    with pytest.raises(ControlPlaneError, match="cannot read"):
        refuse_a_route_out((str(tmp_path / "missing"), str(tmp_path / "missing6")))
