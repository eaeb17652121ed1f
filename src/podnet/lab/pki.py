"""A small certificate authority for the lab's etcd (and the tests' TLS etcd).

Why its own CA per lab: the lab's etcd demands TLS with client certificates, so the
agents of one lab (and `podnet --lab LAB ...`) hold a client certificate signed by that
lab's CA and nothing else can talk to the store, not even another lab's agents.

Why ECDSA P-256: a key is generated in about a millisecond (RSA-2048 takes ~50 ms each)
and both etcd (Go) and Python's ssl accept it. Private keys are written 0600 (created
with that mode, never widened), certificates 0644, into a 0700 directory.

Why the server certificate also carries the clientAuth usage: etcd 3.4's HTTP gateway
(the /v3 JSON API podnet speaks) dials etcd's own gRPC port presenting the server
certificate as its client certificate, which --client-cert-auth then checks.

Why client certificates carry no Common Name: with --client-cert-auth and etcd auth both
on, etcd's gateway refuses (HTTP 400) every request whose client certificate has a CN,
because it cannot pass that identity on as a user name; the user comes from the
password token instead. The subject is an organization only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825


@dataclass(frozen=True)
class Issued:
    """Where one certificate and its key were written."""

    cert: str
    key: str


@dataclass(frozen=True)
class CertAuthority:
    cert: str
    key: str

    @classmethod
    def create(cls, directory: str, name: str = "podnet lab CA") -> CertAuthority:
        """A new self-signed CA as DIR/ca.crt and DIR/ca.key."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key"))
        _write_key(ca.key, key)
        _write_cert(ca.cert, cert)
        return ca

    def issue(self, directory: str, stem: str, common_name: str | None, *,
              server: bool = False,
              client: bool = False, ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()
              ) -> Issued:
        """A certificate signed by this CA as DIR/STEM.crt and DIR/STEM.key."""
        with open(self.cert, "rb") as fh:
            ca_cert = x509.load_pem_x509_certificate(fh.read())
        with open(self.key, "rb") as fh:
            ca_key = serialization.load_pem_private_key(fh.read(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.DNSName(d) for d in dns]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        os.makedirs(directory, mode=0o700, exist_ok=True)
        out = Issued(os.path.join(directory, f"{stem}.crt"),
                     os.path.join(directory, f"{stem}.key"))
        _write_key(out.key, key)
        _write_cert(out.cert, cert)
        return out


def _name(common_name: str | None, organization: str = "podnet") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    write_private(path, data)


def write_private(path: str, data: bytes) -> None:
    """Write a secret: created 0600 whatever the umask, replaced atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_cert(path: str, cert: x509.Certificate) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
