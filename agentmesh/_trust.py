"""The namespace's credentials and what is proved with them: handshake proofs and signed registry records.

A token never crosses the wire. Each namespace gets its own key, derived from
the token and the namespace's name, so a token scopes to its namespace. A
session begins with a challenge-response: the client sends a nonce, the server
answers with a nonce of its own and an HMAC over both nonces, its server id
and the namespace; the client checks it before it sends anything else, then
proves itself the same way in a ticket that later RPCs carry. Registry records
carry an HMAC of their key and content, so write access to etcd alone places
nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

#: the HMAC of a record is this field of its JSON object
MAC_FIELD = "mac"
NONCE_SIZE = 16
_DIGEST = hashlib.sha256


def namespace_key(token: str, namespace: str) -> bytes:
    """The key of one namespace: an HMAC of its name under the token (a token scopes to its namespace)."""
    return hmac.new(token.encode(), b"agentmesh/v1 namespace\0" + namespace.encode(), _DIGEST).digest()


def _proof(key: bytes, role: bytes, client_nonce: bytes, server_nonce: bytes, server_id: str,
           namespace: str) -> bytes:
    message = b"\0".join((b"agentmesh/v1 " + role, client_nonce, server_nonce, server_id.encode(),
                          namespace.encode()))
    return hmac.new(key, message, _DIGEST).digest()


def server_proof(key: bytes, client_nonce: bytes, server_nonce: bytes, server_id: str, namespace: str) -> bytes:
    """What a server sends to prove it holds the namespace key (bound to the client's nonce and its own id)."""
    return _proof(key, b"server", client_nonce, server_nonce, server_id, namespace)


def client_proof(key: bytes, client_nonce: bytes, server_nonce: bytes, server_id: str, namespace: str) -> bytes:
    """What a client sends to prove it holds the namespace key (only after it checked the server's proof)."""
    return _proof(key, b"client", client_nonce, server_nonce, server_id, namespace)


def ticket(client_nonce: bytes, server_nonce: bytes, proof: bytes) -> str:
    """The metadata value that authenticates a client's RPCs to one server."""
    return ".".join((client_nonce.hex(), server_nonce.hex(), proof.hex()))


def parse_ticket(value: str) -> tuple[bytes, bytes, bytes] | None:
    """(client nonce, server nonce, proof) of a ticket in its one canonical spelling, or None when it is not one."""
    parts = value.split(".")
    if len(parts) != 3:
        return None
    try:
        parsed = bytes.fromhex(parts[0]), bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        return None
    return parsed if ticket(*parsed) == value else None


class ServerNonces:
    """A server's nonces, checkable without keeping them: a random part and a MAC of it and the client's nonce."""

    def __init__(self) -> None:
        self._secret = os.urandom(32)

    def issue(self, client_nonce: bytes) -> bytes:
        """A fresh server nonce for this client nonce."""
        random_part = os.urandom(NONCE_SIZE)
        return random_part + self._tag(random_part, client_nonce)

    def valid(self, client_nonce: bytes, server_nonce: bytes) -> bool:
        """True when this server issued server_nonce in answer to client_nonce."""
        if len(server_nonce) != 2 * NONCE_SIZE:
            return False
        return hmac.compare_digest(server_nonce[NONCE_SIZE:], self._tag(server_nonce[:NONCE_SIZE], client_nonce))

    def _tag(self, random_part: bytes, client_nonce: bytes) -> bytes:
        return hmac.new(self._secret, random_part + client_nonce, _DIGEST).digest()[:NONCE_SIZE]


def _record_mac(key: bytes, path: str, record: dict[str, Any]) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, b"agentmesh/v1 record\0" + path.encode() + b"\0" + body.encode(), _DIGEST).hexdigest()


def sign_record(key: bytes, path: str, record: dict[str, Any]) -> bytes:
    """The JSON of record with its MAC field, for the etcd key path (a record cannot be moved to another key)."""
    signed = {name: value for name, value in record.items() if name != MAC_FIELD}
    signed[MAC_FIELD] = _record_mac(key, path, signed)
    return json.dumps(signed).encode()


def verify_record(key: bytes | None, path: str, value: bytes) -> dict[str, Any] | None:
    """The record stored at path if its MAC is right (without the MAC field); None for anything else."""
    if key is None:
        return None
    try:
        record = json.loads(value)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    mac = record.pop(MAC_FIELD, None)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _record_mac(key, path, record)):
        return None
    return record
