"""TLS material for agent servers, their clients and the etcd client, read and checked once.

Certificates and keys are PEM files named by path (``tls_cert=``, ``--tls-cert``,
``AGENTMESH_TLS_CERT`` ...). They are checked with the standard library's
``ssl`` module before gRPC sees them, because gRPC only says "failed to bind"
for a key that does not match its certificate or a file that is not PEM.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import ssl
from typing import Any

import grpc

from ._config import settings

log = logging.getLogger("agentmesh.tls")


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file; ValueError naming the file and what it was for when unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"agentmesh TLS: cannot read the {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"agentmesh TLS: the {what} {path} is not a PEM file")
    return data


def _no_password() -> bytes:
    return b""


def _check_pair(cert: str, key: str) -> None:
    """The certificate and key parse and belong together (an encrypted key is refused, never prompted for)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "MISMATCH" in reason.upper():
            reason = "the key does not belong to the certificate"
        raise ValueError(f"agentmesh TLS: certificate {cert} with key {key} cannot be used: {reason} "
                         f"(keys must be unencrypted PEM)") from None


def _check_ca(path: str, what: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(f"agentmesh TLS: the {what} {path} holds no usable certificate: "
                         f"{exc.reason or exc}") from None


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """An agent server's TLS: its certificate and key, and the CA its clients' certificates must chain to.

    With ``client_ca`` every caller must present a certificate signed by it
    (mutual TLS); without it, TLS encrypts and proves the server's identity
    only, so callers still need the token.
    """

    cert: str
    key: str
    client_ca: str | None = None

    @classmethod
    def from_options(cls, cert: str | None, key: str | None, client_ca: str | None = None) -> "ServerTLS | None":
        """The checked TLS settings for these paths, or None when no certificate is given."""
        if not cert and not key:
            if client_ca:
                raise ValueError("agentmesh TLS: a client CA (tls_client_ca, --tls-client-ca) needs the "
                                 "server's own certificate and key (tls_cert and tls_key)")
            return None
        if not cert or not key:
            raise ValueError("agentmesh TLS: give both the server certificate and its key "
                             "(tls_cert and tls_key, --tls-cert and --tls-key)")
        tls = cls(os.path.abspath(cert), os.path.abspath(key),
                  os.path.abspath(client_ca) if client_ca else None)
        read_pem(tls.cert, "certificate")
        read_pem(tls.key, "private key")
        _check_pair(tls.cert, tls.key)
        if tls.client_ca:
            read_pem(tls.client_ca, "client CA")
            _check_ca(tls.client_ca, "client CA")
        return tls

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate."""
        return bool(self.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials (files are read now, so a renewed certificate applies on restart)."""
        log.debug("serving TLS with %s (client certificates %s)", self.cert,
                  f"required, from {self.client_ca}" if self.mutual else "not required")
        return grpc.ssl_server_credentials(
            [(read_pem(self.key, "private key"), read_pem(self.cert, "certificate"))],
            root_certificates=read_pem(self.client_ca, "client CA") if self.client_ca else None,
            require_client_auth=self.mutual)


def check_client_settings(ca: str | None, cert: str | None, key: str | None) -> None:
    """Refuse a client certificate without its key (or the reverse) and unreadable files."""
    if bool(cert) != bool(key):
        raise ValueError("agentmesh TLS: give both tls_cert and tls_key (AGENTMESH_TLS_CERT and "
                         "AGENTMESH_TLS_KEY) for a client certificate, or neither")
    if ca:
        read_pem(ca, "CA certificate")
    if cert and key:
        read_pem(cert, "certificate")
        read_pem(key, "private key")


def client_tls_enabled() -> bool:
    """True when this process's calls to agent servers use TLS (what make_channel decides)."""
    return bool(settings.tls_ca or settings.tls_cert)


def channel_credentials() -> grpc.ChannelCredentials | None:
    """Credentials for a channel to an agent server from this process's settings, or None for plaintext."""
    if not client_tls_enabled():
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(settings.tls_ca, "CA certificate") if settings.tls_ca else None,
        private_key=read_pem(settings.tls_key, "private key") if settings.tls_key else None,
        certificate_chain=read_pem(settings.tls_cert, "certificate") if settings.tls_cert else None)


def is_plaintext_child(address: str) -> bool:
    """True for a child server of this process that listens without TLS (loopback, behind a token).

    A process with a CA but no certificate starts plaintext children; its
    channels to them must then be plaintext even though its settings ask for TLS.
    """
    from .server._child import child_pool

    return any(child.address == address and not child.config.get("tls_cert")
               for child in list(child_pool._children))


def client_settings() -> dict[str, str | None]:
    """This process's client TLS settings as absolute paths, for a server process it starts."""
    return {name: os.path.abspath(value) if value else None
            for name, value in (("tls_ca", settings.tls_ca), ("tls_cert", settings.tls_cert),
                                ("tls_key", settings.tls_key))}


def etcd_settings() -> dict[str, str | None]:
    """This process's etcd TLS settings as absolute paths, for a server process it starts."""
    return {name: os.path.abspath(value) if value else None
            for name, value in (("etcd_ca", settings.etcd_ca), ("etcd_cert", settings.etcd_cert),
                                ("etcd_key", settings.etcd_key))}


def etcd_client_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``EtcdClient``/``EtcdClient.from_url`` from the etcd TLS settings.

    Empty when none is set; a CA or a client certificate turns TLS on even
    for an ``etcd://`` URL (``etcds://`` alone means TLS with the system's CAs).
    """
    kwargs: dict[str, Any] = {}
    if settings.etcd_ca:
        kwargs["ca_cert"] = settings.etcd_ca
    if settings.etcd_cert or settings.etcd_key:
        if not (settings.etcd_cert and settings.etcd_key):
            raise ValueError("agentmesh: give both etcd_cert and etcd_key (AGENTMESH_ETCD_CERT and "
                             "AGENTMESH_ETCD_KEY) for an etcd client certificate, or neither")
        kwargs["cert"] = settings.etcd_cert
        kwargs["key"] = settings.etcd_key
    return kwargs
