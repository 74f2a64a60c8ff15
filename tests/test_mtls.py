"""Mutual TLS between services (GRPC_TLS_CERT/KEY/CA): the platform works end to end over it, and
a client without a certificate from the CA, or without TLS at all, is not served."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from devtools.stack import Stack
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import Conversation

Key = ec.EllipticCurvePrivateKey


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject: str, key: Key, issuer: x509.Name | None, signer: Key) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:  # the CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:  # one certificate for every service, as server and as client
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a service certificate signed by it, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, service_key = _key(), _key()
    ca = _certificate("wacoder test CA", ca_key, None, ca_key)
    service = _certificate("wacoder service", service_key, ca.subject, ca_key)
    files = {
        "ca": (folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        "cert": (folder / "service.pem", service.public_bytes(serialization.Encoding.PEM)),
        "key": (folder / "service.key", _pem_key(service_key)),
    }
    for path, content in files.values():
        path.write_bytes(content)
    return {name: path for name, (path, _) in files.items()}


@pytest.fixture(scope="module")
def stack_overrides(pki: dict[str, Path]) -> dict[str, str]:
    return {
        "GRPC_TLS_CERT": str(pki["cert"]),
        "GRPC_TLS_KEY": str(pki["key"]),
        "GRPC_TLS_CA": str(pki["ca"]),
    }


def health_check(channel: grpc.Channel) -> None:
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)


def test_the_platform_works_over_mutual_tls(new_user: Callable[[], Conversation]) -> None:
    user = new_user()
    assert "Commands" in user.ask("/help")  # webhook -> agent -> notifier, each hop over mTLS
    assert "AutoCoder agents" in user.ask("/agents")


def test_a_client_without_tls_or_without_a_certificate_is_not_served(
    stack: Stack, env: dict[str, str], pki: dict[str, Path]
) -> None:
    addr = env["AGENT_ADDR"]
    with grpc.insecure_channel(addr) as plaintext, pytest.raises(grpc.RpcError):
        health_check(plaintext)
    anonymous = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    with grpc.secure_channel(addr, anonymous) as no_certificate, pytest.raises(grpc.RpcError):
        health_check(no_certificate)
    mutual = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki["key"].read_bytes(),
        certificate_chain=pki["cert"].read_bytes(),
    )
    with grpc.secure_channel(addr, mutual) as ours:
        health_check(ours)  # served
