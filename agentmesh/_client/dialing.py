"""How this process dials agent servers: its credentials, limits and TLS, and the channel that follows."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import grpc

from .. import _protocol, _tls, _trust
from .._address import host_of, is_loopback
from .._tokens import local_token


@dataclasses.dataclass(frozen=True)
class Dialing:
    """How this process dials agent servers: its credentials, limits and TLS (from its settings)."""

    token: str | None
    max_message_size: int
    connect_timeout: float
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: addresses dialled in plaintext even so: this process's child servers and their siblings (loopback)
    plaintext: Callable[[str], bool] = lambda address: False
    #: plaintext to network (non-loopback) addresses is allowed; otherwise it is refused
    insecure: bool = False
    namespace: str = "default"
    #: (namespace, token) of this process's child server (or, in a child, sibling) at an address; None: not one
    child_credentials: Callable[[str], "tuple[str, str | None] | None"] = lambda address: None

    @property
    def tls(self) -> bool:
        """True when this process speaks TLS to agent servers."""
        return bool(self.tls_ca or self.tls_cert)

    def credentials(self, address: str, namespace: str | None) -> tuple[str, bytes]:
        """The namespace to claim at address and the key its server must prove it holds (given no token,
        this user's local token's)."""
        child = self.child_credentials(address)
        if child is not None:
            child_namespace, child_token = child
            return child_namespace, _namespace_key(child_token or local_token(), child_namespace)
        namespace = namespace or self.namespace
        return namespace, _namespace_key(self.token or local_token(), namespace)

    def proof_optional(self, address: str) -> bool:
        """True when a server at address may answer without a proof: this process has no token, and speaks
        TLS there (the server's certificate proves it: a mutual-TLS server without a token has no key) or
        was told insecure=True (an open development server)."""
        return self.token is None and self.child_credentials(address) is None and (
            self.insecure or (self.tls and not self.plaintext(address)))

    def channel(self, address: str) -> grpc.aio.Channel:
        """An aio channel to address with agentmesh's options: TLS when configured, plaintext only where allowed."""
        options = _protocol.channel_options(self.max_message_size)
        if self.tls and not self.plaintext(address):
            credentials = _tls.channel_credentials(self.tls_ca, self.tls_cert, self.tls_key)
            return grpc.aio.secure_channel(address, credentials, options=options)
        if not self.insecure and not is_loopback(host_of(address)):
            raise ValueError(
                f"agentmesh: refusing to dial agent server {address} in plaintext: it is not a loopback address, "
                f"so the calls would cross the network unencrypted to a server nobody verified. Use TLS "
                f"(tls_ca=, AGENTMESH_TLS_CA, with a TLS server there), or insecure=True "
                f"(AGENTMESH_INSECURE=1) if you really mean it")
        return grpc.aio.insecure_channel(address, options=options)


@functools.lru_cache(maxsize=64)
def _namespace_key(token: str, namespace: str) -> bytes:
    return _trust.namespace_key(token, namespace)
