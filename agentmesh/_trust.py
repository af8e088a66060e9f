"""The namespace's credentials and what is proved with them: handshake proofs, tickets and signed registry records.

A token never crosses the wire. Each namespace gets its own key, derived from
the token and the namespace's name, so a token scopes to its namespace. A
session begins with a challenge-response: the client sends a nonce, the
namespace and the address it dialled; a server that answers to that address
replies with a nonce of its own and an HMAC over all of it and its server id.
The client checks that before it sends anything else, then proves itself the
same way in a ticket that later RPCs carry. Both proofs and the ticket name
the address dialled, so a relay at another address cannot use them: the real
server refuses a handshake for an address that is not its own, and a proof
made for its own address does not match the relay's. A ticket opens new RPCs
for TICKET_TTL seconds, and a session it opened keeps it valid while that
session lasts. Registry records carry an HMAC of their key and content, are
bound to the lease they were written under and carry when they were signed
(readers check both: discovery/records.py), so write access to etcd alone
places nothing and cannot revive an old record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import struct
import time
from typing import Any

#: the HMAC of a record is this field of its JSON object
MAC_FIELD = "mac"
NONCE_SIZE = 16
#: seconds a ticket may open new RPCs after its handshake (a session it opened keeps it valid longer)
TICKET_TTL = 60.0
_DIGEST = hashlib.sha256
_ISSUED = struct.Struct(">Q")   # a server nonce's issue time, in ms since the epoch


def namespace_key(token: str, namespace: str) -> bytes:
    """The key of one namespace: an HMAC of its name under the token (a token scopes to its namespace)."""
    return hmac.new(token.encode(), b"agentmesh/v1 namespace\0" + namespace.encode(), _DIGEST).digest()


@dataclasses.dataclass(frozen=True)
class Challenge:
    """What a client sends to open a handshake: a nonce, the namespace it claims, the address it dialled."""

    client_nonce: bytes
    namespace: str
    address: str


def _proof(key: bytes, role: bytes, challenge: Challenge, server_nonce: bytes, server_id: str) -> bytes:
    message = b"\0".join((b"agentmesh/v2 " + role, challenge.client_nonce, server_nonce, server_id.encode(),
                          challenge.namespace.encode(), challenge.address.encode()))
    return hmac.new(key, message, _DIGEST).digest()


def server_proof(key: bytes, challenge: Challenge, server_nonce: bytes, server_id: str) -> bytes:
    """What a server sends to prove it holds the namespace key (bound to the challenge, its nonce and its id)."""
    return _proof(key, b"server", challenge, server_nonce, server_id)


def client_proof(key: bytes, challenge: Challenge, server_nonce: bytes, server_id: str) -> bytes:
    """What a client sends to prove it holds the namespace key (only after it checked the server's proof)."""
    return _proof(key, b"client", challenge, server_nonce, server_id)


def ticket(challenge: Challenge, server_nonce: bytes, proof: bytes) -> str:
    """The metadata value that authenticates a client's RPCs to one server, at the address it dialled."""
    return ".".join((challenge.client_nonce.hex(), server_nonce.hex(), proof.hex(), challenge.address.encode().hex()))


def parse_ticket(value: str) -> tuple[bytes, bytes, bytes, str] | None:
    """(client nonce, server nonce, proof, address) of a ticket in its one canonical spelling, or None."""
    parts = value.split(".")
    if len(parts) != 4:
        return None
    try:
        client_nonce, server_nonce, proof, address = (bytes.fromhex(part) for part in parts)
        parsed = client_nonce, server_nonce, proof, address.decode()
    except ValueError:
        return None
    if ticket(Challenge(client_nonce, "", parsed[3]), server_nonce, proof) != value:
        return None
    return parsed


class ServerNonces:
    """A server's nonces, checkable without keeping them: a random part, the issue time and a MAC of both,
    the client's nonce and the address the client dialled."""

    def __init__(self) -> None:
        self._secret = os.urandom(32)

    def issue(self, client_nonce: bytes, address: str) -> bytes:
        """A fresh server nonce for this client nonce and address."""
        head = os.urandom(NONCE_SIZE) + _ISSUED.pack(int(time.time() * 1000))
        return head + self._tag(head, client_nonce, address)

    def issued_at(self, client_nonce: bytes, server_nonce: bytes, address: str) -> float | None:
        """When this server issued server_nonce for client_nonce and address (epoch seconds); None if it did not."""
        if len(server_nonce) != 2 * NONCE_SIZE + _ISSUED.size:
            return None
        head, tag = server_nonce[:-NONCE_SIZE], server_nonce[-NONCE_SIZE:]
        if not hmac.compare_digest(tag, self._tag(head, client_nonce, address)):
            return None
        return _ISSUED.unpack(head[NONCE_SIZE:])[0] / 1000

    def _tag(self, head: bytes, client_nonce: bytes, address: str) -> bytes:
        return hmac.new(self._secret, b"\0".join((head, client_nonce, address.encode())), _DIGEST).digest()[:NONCE_SIZE]


#: the (signed) id of the etcd lease a record was written under: readers refuse it under any other lease
LEASE_FIELD = "lease"
#: the (signed) wall-clock time a record was signed at, by which readers judge its freshness
SIGNED_AT_FIELD = "signed_at"


class BadRecord(ValueError):
    """A registry record that is not one of ours; the message says why (readers log it once)."""


class UnverifiedRecord(BadRecord):
    """A record whose signature does not verify with this namespace's token: forged, or signed with another token
    (when none verifies, the reader's token is most likely not the servers')."""


def _record_mac(key: bytes, path: str, record: dict[str, Any]) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    message = b"agentmesh/v1 record\0" + path.encode("utf-8", "surrogateescape") + b"\0" + body.encode()
    return hmac.new(key, message, _DIGEST).hexdigest()


def sign_record(key: bytes, path: str, record: dict[str, Any], lease: int, signed_at: float | None = None) -> bytes:
    """The JSON of record, bound to the etcd key path and the lease it is written under and stamped with the wall
    clock time of signing, with its MAC: it cannot be moved to another key nor replayed under another lease."""
    signed = {name: value for name, value in record.items() if name != MAC_FIELD}
    signed[LEASE_FIELD] = lease
    signed[SIGNED_AT_FIELD] = time.time() if signed_at is None else signed_at
    signed[MAC_FIELD] = _record_mac(key, path, signed)
    return json.dumps(signed).encode()


def verify_record(key: bytes | None, path: str, value: bytes, lease: int) -> dict[str, Any]:
    """The record stored at path, attached to lease, without its MAC field; BadRecord says why it is not one of
    ours: no key to check it with, no lease, not a JSON object, a MAC that does not verify, or signed for
    another lease (an old record written back)."""
    if key is None:
        raise BadRecord("there is no namespace token to verify it with")
    if not lease:
        raise BadRecord("it has no lease")
    try:
        record = json.loads(value)
    except (ValueError, RecursionError):
        raise BadRecord("it is not JSON") from None
    if not isinstance(record, dict):
        raise BadRecord("it is not a JSON object")
    mac = record.pop(MAC_FIELD, None)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _record_mac(key, path, record)):
        raise UnverifiedRecord("its signature does not verify with this namespace's token (forged, or written "
                               "with another token)")
    if type(record.get(LEASE_FIELD)) is not int or record[LEASE_FIELD] != lease:
        raise BadRecord(f"it was signed for another lease than the one it is attached to ({lease:x}): an old "
                        f"record written back")
    return record
