"""What a test needs to speak the wire protocol by hand (raw gRPC): the handshake, metadata, versions, pickling."""
from __future__ import annotations

import hmac
import os

import grpc

from .. import _trust
from .._codec import dumps, loads
from .._config import DEFAULT_MAX_MESSAGE_SIZE
from .._tokens import local_token
from .._protocol import (CLOUDPICKLE_MAJOR, MD_ADDRESS, MD_AUTH, MD_NAMESPACE, MD_NONCE, MD_PICKLE, MD_PROTOCOL,
                         MD_PYTHON, MD_STATUS, PROTOCOL_VERSION, PYTHON_VERSION, SERVICE_NAME, call_metadata,
                         handshake_metadata)
from ..v1 import agent_server_pb2 as pb
from ..v1 import agent_server_pb2_grpc as pb_grpc

__all__ = ["dumps", "loads", "DEFAULT_MAX_MESSAGE_SIZE", "CLOUDPICKLE_MAJOR", "MD_ADDRESS", "MD_AUTH", "MD_NAMESPACE",
           "MD_NONCE", "MD_PICKLE", "MD_PROTOCOL",
           "MD_PYTHON", "MD_STATUS", "PROTOCOL_VERSION", "PYTHON_VERSION", "SERVICE_NAME", "call_metadata",
           "authenticate", "handshake", "ticket_for", "dialled"]


def ticket_for(token: str, namespace: str, answer: pb.HandshakeResponse, challenge: _trust.Challenge) -> str:
    """The ticket a client holding token makes from a server's handshake answer (the server's proof unchecked)."""
    key = _trust.namespace_key(token, namespace)
    proof = _trust.client_proof(key, challenge, answer.server_nonce, answer.server_id)
    return _trust.ticket(challenge, answer.server_nonce, proof)


def dialled(channel: grpc.Channel) -> str:
    """The "host:port" a synchronous channel was made for (what its handshake must name)."""
    target = getattr(channel, "_target", "")
    return target.split("///", 1)[-1] if isinstance(target, str) else ""


def handshake(channel: grpc.Channel, namespace: str = "default", timeout: float = 5.0,
              address: str | None = None) -> tuple[pb.HandshakeResponse, _trust.Challenge]:
    """A Handshake on a synchronous channel: (the server's answer, the challenge it answered)."""
    challenge = _trust.Challenge(os.urandom(_trust.NONCE_SIZE), namespace, address or dialled(channel))
    answer = pb_grpc.AgentServerStub(channel).Handshake(
        pb.HandshakeRequest(), timeout=timeout,
        metadata=handshake_metadata(challenge.client_nonce, namespace, challenge.address))
    return answer, challenge


def authenticate(channel: grpc.Channel, token: str | None, namespace: str = "default",
                 timeout: float = 5.0, address: str | None = None) -> tuple[tuple[str, str], ...]:
    """Handshake with the server on a synchronous channel; the call metadata for its other RPCs.

    The server's proof is checked as a proxy checks it (AssertionError if wrong).
    Without a token, this user's local token is used, as a process given none does.
    """
    token = token or local_token()
    answer, challenge = handshake(channel, namespace, timeout, address)
    expected = _trust.server_proof(_trust.namespace_key(token, namespace), challenge, answer.server_nonce,
                                   answer.server_id)
    assert hmac.compare_digest(answer.proof, expected), "the server's handshake proof is wrong"
    return call_metadata(ticket_for(token, namespace, answer, challenge))
