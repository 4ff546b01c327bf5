"""TLS credentials of one MPC session: a session CA and a certificate per rank, as files.

    directory = issue_credentials(Path("/run/mpcformer/tls-job-42"), ranks=3)   # parties 0, 1 and the dealer
    # rank r reads ca.pem, rank-<r>.pem and rank-<r>.key from it (load_credentials)

The CA (ECDSA P-256) exists only while :func:`issue_credentials` runs: its key signs one
certificate per rank and is then dropped, never written, so no certificate can be added to the
session afterwards and one session's certificates are worthless in another. Each rank's
certificate names it (``CN=mpcformer-rank-<r>``) and serves as TLS server and client certificate
(:mod:`mpcformer.mpc.secure_transport` checks the name against the rank a peer claims). Keys and
certificates come from the ``cryptography`` package (OpenSSL); files are written mode 0600 in a
directory of mode 0700. Deploy each rank's pair only where that rank runs (a Kubernetes Secret per
role); ``ca.pem`` goes everywhere. Credentials travel as files, never as actor arguments.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Credentials", "issue_credentials", "load_credentials", "rank_name"]

#: How long a session's certificates are valid (a session is one party group's lifetime).
_VALIDITY = datetime.timedelta(days=2)


def rank_name(rank: int) -> str:
    """The name in rank ``rank``'s certificate (its common name and DNS subject alternative name)."""
    return f"mpcformer-rank-{rank}"


@dataclass(frozen=True)
class Credentials:
    """The files rank ``rank`` presents and trusts."""

    rank: int
    ca: Path
    cert: Path
    key: Path


def load_credentials(directory: str | os.PathLike, rank: int) -> Credentials:
    """Rank ``rank``'s files in ``directory``; raises ``FileNotFoundError`` naming what is missing."""
    directory = Path(directory)
    creds = Credentials(rank, directory / "ca.pem", directory / f"rank-{rank}.pem", directory / f"rank-{rank}.key")
    missing = [str(path) for path in (creds.ca, creds.cert, creds.key) if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"TLS credentials of rank {rank} not found: {', '.join(missing)} (issue them with "
            "mpcformer.mpc.credentials.issue_credentials and mount them where the rank runs)"
        )
    return creds


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def issue_credentials(directory: str | os.PathLike, ranks: int) -> Path:
    """Issue a fresh session CA and certificates for ranks ``0 .. ranks-1`` into ``directory``
    (created mode 0700; it must not hold credentials already). Returns the directory."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mpcformer session CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
    for rank in range(ranks):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, rank_name(rank))])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(rank_name(rank))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(directory / f"rank-{rank}.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write_private(directory / f"rank-{rank}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory
