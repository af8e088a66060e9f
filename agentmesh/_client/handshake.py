"""Proving an agent server is one of ours before anything is sent to it: the handshake that opens a session."""
from __future__ import annotations

import hmac
import os

import grpc

from .. import _protocol, _status, _trust, errors
from ..v1 import agent_server_pb2 as pb
from ..v1 import agent_server_pb2_grpc as pb_grpc


class ServerMismatchError(errors.ServerUnavailableError):
    """The server at an address is not the one the caller chose (it was replaced, or is an impostor)."""


class UnprovenServerError(errors.AuthenticationError, errors.ServerUnavailableError):
    """The server at an address did not prove it holds the namespace key: nothing is sent to it.

    For the agent it is as good as gone (a proxy moves its agent elsewhere);
    for a caller who named the address it is an authentication failure.
    """


async def handshake(stub: pb_grpc.AgentServerStub, address: str, key: bytes, namespace: str,
                    expect: str = "", timeout: float = 5.0, proof_optional: bool = False,
                    tls: bool | None = None, client_cert: bool = False,
                    ) -> tuple[pb.HandshakeResponse, tuple[tuple[str, str], ...]]:
    """Prove the server at address holds the namespace key, then make our ticket; (its answer, call metadata).
    tls and client_cert: how address was dialled, so that a failed connection says what it likely means.

    The challenge names address, the address dialled: a server proves itself
    only for an address that reaches it, so a relay there gets nothing it can
    use. Nothing derived from the key leaves this process unless the server's
    proof is right and, given expect, it is that server.
    """
    challenge = _trust.Challenge(os.urandom(_trust.NONCE_SIZE), namespace, address)
    try:
        answer = await stub.Handshake(pb.HandshakeRequest(), timeout=timeout, metadata=_protocol.handshake_metadata(
            challenge.client_nonce, namespace, address))
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            raise UnprovenServerError(f"the server at {address} failed the handshake ({exc.code().name}: "
                                      f"{exc.details()}): it is not an agentmesh server of this protocol version, "
                                      f"or a broken one; nothing was sent to it") from None
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise UnprovenServerError(f"agent server {address} refused the handshake: {exc.details()}; nothing "
                                      f"was sent to it") from None
        raise _status.rpc_error(exc, address, "the handshake", tls, client_cert) from None
    if not isinstance(answer, pb.HandshakeResponse):
        raise UnprovenServerError(f"the server at {address} answered the handshake with something that is not a "
                                  f"handshake answer (not an agentmesh server, or a broken one); nothing was sent "
                                  f"to it")
    if expect and answer.server_id != expect:
        raise ServerMismatchError(f"the agent server at {address} is {answer.server_id or 'anonymous'}, not "
                                  f"{expect} (the server chosen is gone); nothing was sent to it")
    if not answer.proof and proof_optional:
        return answer, _protocol.call_metadata()   # a mutual-TLS server without a token: its certificate proved it
    if not answer.proof:
        raise UnprovenServerError(f"agent server {address} has no token, so it cannot prove it is one of "
                                  f"ours; nothing was sent to it")
    expected = _trust.server_proof(key, challenge, answer.server_nonce, answer.server_id)
    if not hmac.compare_digest(answer.proof, expected):
        raise UnprovenServerError(f"agent server {address} did not prove it holds the token of namespace "
                                  f"{namespace!r} for the address {address} (an impostor, a relay to another "
                                  f"server, or another token); nothing was sent to it")
    proof = _trust.client_proof(key, challenge, answer.server_nonce, answer.server_id)
    return answer, _protocol.call_metadata(_trust.ticket(challenge, answer.server_nonce, proof))
