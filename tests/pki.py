"""PEM files of trustme's CAs for the TLS tests: a server, a client, and a stranger whose
certificate another CA signed (`pki`, a fixture every test module has: conftest.py
loads this module as a plugin)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from dumpd.tls import client_context


@dataclass(frozen=True)
class Pki:
    """PEM files: the server's certificate and key, the CA of client certificates, a
    client's certificate and key, and a client certificate from another CA."""

    server_cert: str
    server_key: str
    ca: str
    client_cert: str
    client_key: str
    stranger_cert: str
    stranger_key: str

    def server_options(self) -> dict[str, str]:
        return {"tls_cert": self.server_cert, "tls_key": self.server_key,
                "tls_client_ca": self.ca}

    def client(self) -> ssl.SSLContext:
        return client_context(self.client_cert, self.client_key, self.ca)

    def client_args(self) -> list[str]:
        return ["--tls-cert", self.client_cert, "--tls-key", self.client_key,
                "--tls-ca", self.ca]


def non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        host: str = probe.getsockname()[0]
    return None if host.startswith("127.") else host


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, stranger_ca = trustme.CA(), trustme.CA()
    hosts = ["localhost", "127.0.0.1", "::1", *filter(None, [non_loopback_address()])]
    files = {}
    for name, issuer, identities, cn in (("server", ca, hosts, "dumpd"),
                                         ("client", ca, ["backup@example.org"], "backup"),
                                         ("stranger", stranger_ca, ["x@example.org"], "x")):
        leaf = issuer.issue_cert(*identities, common_name=cn, organization_name="dumpd tests",
                                 organization_unit_name="access")
        files[f"{name}_cert"] = str(tmp_path / f"{name}.pem")
        files[f"{name}_key"] = str(tmp_path / f"{name}.key")
        for blob in leaf.cert_chain_pems:
            blob.write_to_path(files[f"{name}_cert"], append=True)
        leaf.private_key_pem.write_to_path(files[f"{name}_key"])
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return Pki(ca=str(tmp_path / "ca.pem"), **files)
