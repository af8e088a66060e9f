"""TLS material, read and checked once: the one place that builds gRPC credentials.

Certificates and keys are PEM files named by path (``tls_cert=``, ``--tls-cert``,
``AGENTMESH_TLS_CERT`` ...). They are checked with the standard library's
``ssl`` module before gRPC sees them, because gRPC only says "failed to bind"
for a key that does not match its certificate or a file that is not PEM.
Agent-server channels, the server's own port and the etcd client all get
their credentials here.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import ssl

import grpc

log = logging.getLogger("agentmesh.tls")

Pem = bytes | str | os.PathLike


def read_pem(value: Pem, what: str) -> bytes:
    """PEM bytes as given, or read from a path; ValueError naming the file and what it was for."""
    if isinstance(value, bytes):
        data = value
        source = f"the {what} given as bytes"
    else:
        path = os.fspath(value)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ValueError(f"agentmesh TLS: cannot read the {what} {path}: {exc.strerror or exc}") from None
        source = f"the {what} {path}"
    if b"-----BEGIN " not in data:
        raise ValueError(f"agentmesh TLS: {source} is not a PEM file")
    return data


def require_pair(cert: object, key: object, names: str) -> None:
    """A certificate comes with its key: ValueError when only one is given (names: how the user spells them)."""
    if bool(cert) != bool(key):
        raise ValueError(f"agentmesh TLS: give both {names}, or neither")


def _no_password() -> bytes:
    return b""


def check_pair(cert: str, key: str) -> None:
    """The certificate and key parse and belong together (an encrypted key is refused, never prompted for)."""
    read_pem(cert, "certificate")
    read_pem(key, "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "MISMATCH" in reason.upper():
            reason = "the key does not belong to the certificate"
        raise ValueError(f"agentmesh TLS: certificate {cert} with key {key} cannot be used: {reason} "
                         f"(keys must be unencrypted PEM)") from None


#: OpenSSL's X509_V_ERR_INVALID_PURPOSE: a certificate not meant for what it is used for
_INVALID_PURPOSE = 26


def check_serves(cert: str, key: str) -> None:
    """The certificate may serve TLS: clients refuse one whose extendedKeyUsage lacks serverAuth (a client
    certificate), so such a server would start and register, and only its callers would fail, later.

    Checked with a TLS handshake in memory in which the certificate is its own
    trust anchor, so OpenSSL applies the purpose check a client applies. Any
    other failure of that handshake is left for the real clients to report.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key, password=_no_password)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cafile=cert)
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ends = (client.wrap_bio(to_client, to_server), server.wrap_bio(to_server, to_client, server_side=True))
    for _ in range(8):
        for end in ends:
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLCertVerificationError as exc:
                if exc.verify_code == _INVALID_PURPOSE:
                    raise ValueError(
                        f"agentmesh TLS: certificate {cert} cannot serve: it is not a server certificate (its "
                        f"extendedKeyUsage lacks serverAuth, e.g. a client certificate), so every client would "
                        f"refuse this server; serve with a server certificate, such as make-local-ca's "
                        f"server.crt") from None
                return
            except ssl.SSLError:
                return
        if all(end.version() for end in ends):
            return


def check_ca(path: str, what: str) -> None:
    """The file holds at least one CA certificate the ssl module accepts."""
    read_pem(path, what)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(f"agentmesh TLS: the {what} {path} holds no usable certificate: "
                         f"{exc.reason or exc}") from None


def channel_credentials(ca: Pem | None, cert: Pem | None = None,
                        key: Pem | None = None) -> grpc.ChannelCredentials:
    """Client credentials for agent servers: verify the peer with the pinned ca (required), present cert/key if given.

    Without a CA gRPC would trust the system's public roots: any certificate a
    public CA issued for the name would pass, so agentmesh refuses instead.
    """
    if not ca:
        raise ValueError("agentmesh TLS: TLS to agent servers needs tls_ca (AGENTMESH_TLS_CA), the CA their "
                         "certificates must chain to; agentmesh never trusts the system's public roots for them")
    require_pair(cert, key, "a client certificate and its key")
    return _credentials(ca, cert, key)


def etcd_credentials(ca: Pem | None = None, cert: Pem | None = None,
                     key: Pem | None = None) -> grpc.ChannelCredentials:
    """etcd client credentials: verify etcd with ca, else the system's roots (a managed etcd); cert/key if given."""
    require_pair(cert, key, "a client certificate and its key")
    return _credentials(ca, cert, key)


def _credentials(ca: Pem | None, cert: Pem | None, key: Pem | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "CA certificate") if ca is not None else None,
        private_key=read_pem(key, "private key") if key is not None else None,
        certificate_chain=read_pem(cert, "certificate") if cert is not None else None)


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
        require_pair(cert, key, "the server certificate and its key (tls_cert and tls_key, --tls-cert "
                                "and --tls-key)")
        tls = cls(os.path.abspath(cert), os.path.abspath(key),  # type: ignore[arg-type]
                  os.path.abspath(client_ca) if client_ca else None)
        check_pair(tls.cert, tls.key)
        check_serves(tls.cert, tls.key)
        if tls.client_ca:
            check_ca(tls.client_ca, "client CA")
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
