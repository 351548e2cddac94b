"""SPIFFE identities for the local mesh: a throwaway certificate authority and one X.509 SVID per service.

An SVID is a certificate whose only name is a URI SAN `spiffe://<trust domain>/ns/<namespace>/sa/<service>`,
the form Istio gives a pod's service account, so the local policy names callers exactly as a cluster's
does. Keys are ECDSA P-256 (what SPIRE and Istio issue by default). Everything is written under one
directory, this user's alone as the rest of the data directory (files 0600, the folder 0700: no other account
needs the certificates either); a new authority is made whenever the mesh starts, so nothing outlives the
stack that trusts it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shopmesh_chassis.local_stack import make_private_folder, write_private_file

TRUST_DOMAIN = "shopmesh.local"
NAMESPACE = "shopmesh"
# Long enough for a `make run` left running for weeks (nothing rotates them while it runs); the authority
# is remade on every start, so nothing outlives the stack that trusts it by more than that.
LIFETIME = datetime.timedelta(days=30)
# Clocks of the processes agree (one machine), but a certificate valid "from now" can be refused by a
# handshake in the same second.
_BACKDATE = datetime.timedelta(minutes=5)


def spiffe_id(service: str) -> str:
    """The identity a service's sidecar presents (and the principal the policy names)."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service}"


def dns_name(service: str) -> str:
    """The DNS name an SVID also carries, as a Kubernetes Service's: a TLS client that checks host names
    (grpcurl, a Python grpc channel) can verify the sidecar by it (`-servername`, `ssl_target_name_override`).
    The mesh itself matches only the SPIFFE id."""
    return f"{service}.{NAMESPACE}.svc"


@dataclass(frozen=True)
class Svid:
    """Where one service's certificate and key are, as PEM files."""

    service: str
    certificate: Path
    key: Path

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.service)


@dataclass(frozen=True)
class MeshIdentities:
    """The authority's certificate (every sidecar's trust bundle) and each service's SVID."""

    bundle: Path
    svids: dict[str, Svid]

    def svid(self, service: str) -> Svid:
        return self.svids[service]


def svid_files(directory: Path, service: str) -> Svid:
    """Where `issue` writes a service's SVID in `directory`."""
    return Svid(service, directory / f"{service}.pem", directory / f"{service}-key.pem")


def bundle_file(directory: Path) -> Path:
    return directory / "ca.pem"


@dataclass(frozen=True)
class MutualTls:
    """What a gRPC channel needs to call `callee`'s sidecar as `caller`: the credentials and the channel
    options (the DNS name the sidecar is verified by)."""

    credentials: grpc.ChannelCredentials
    options: tuple[tuple[str, str], ...]


def mtls_as(directory: Path, caller: str, callee: str) -> MutualTls:
    """`caller`'s SVID from the authority in `directory`, verifying `callee`'s sidecar by its DNS name (as
    grpcurl -servername). Give it to a chassis channel (`ResilientChannel(..., credentials=tls.credentials,
    channel_options=tls.options)`) to call a meshed service as its callers' clients do: their retries,
    deadlines and breakers."""
    svid = svid_files(directory, caller)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle_file(directory).read_bytes(),
        private_key=svid.key.read_bytes(),
        certificate_chain=svid.certificate.read_bytes(),
    )
    return MutualTls(credentials, (("grpc.ssl_target_name_override", dns_name(callee)),))


def channel_as(directory: Path, caller: str, callee: str, address: str) -> grpc.aio.Channel:
    """A plain grpc.aio channel (no retries, no deadline) to `callee`'s sidecar at `address` presenting
    `caller`'s SVID (see `mtls_as`): tests, benchmarks, tools that call a meshed service as one of its
    callers."""
    tls = mtls_as(directory, caller, callee)
    return grpc.aio.secure_channel(address, tls.credentials, options=list(tls.options))


def issue(directory: Path, services: Iterable[str]) -> MeshIdentities:
    """A new authority in `directory`, and an SVID for each of `services` signed by it."""
    make_private_folder(directory)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shopmesh local mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{TRUST_DOMAIN} root"),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        # A signing certificate may name its trust domain (the SPIFFE X.509-SVID standard).
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}")]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    bundle = bundle_file(directory)
    write_private_file(bundle, ca.public_bytes(serialization.Encoding.PEM))
    svids = {name: _issue_svid(directory, name, ca, ca_key, now) for name in services}
    return MeshIdentities(bundle=bundle, svids=svids)


def _issue_svid(
    directory: Path, service: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> Svid:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        # X.509-SVIDs identify by the URI SAN alone; the subject is informational.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        # Every sidecar is a server (inbound) and a client (outbound).
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id(service)), x509.DNSName(dns_name(service))]
            ),
            critical=True,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    svid = svid_files(directory, service)
    write_private_file(svid.certificate, certificate.public_bytes(serialization.Encoding.PEM))
    write_private_file(
        svid.key,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return svid


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """An authority signs certificates; an SVID signs TLS handshakes (ECDHE key agreement)."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not signs_certificates,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )
