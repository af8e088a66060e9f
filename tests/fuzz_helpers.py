"""Constants, checks and hypothesis strategies of the fuzz test (tests/test_fuzz.py)."""
from __future__ import annotations

import collections
import hashlib
import os
import time

import grpc
from hypothesis import strategies as st

from agentmesh.testing import wire as _wire
from agentmesh.v1 import agent_server_pb2 as pb
from wire_helpers import file_writing_pickle


FULL = os.environ.get("AGENTMESH_FUZZ_FULL") == "1"
TARGET_REQUESTS = 10_000 if FULL else 600
TOKEN = "fuzz-Vq3Lm8Zr5Tx1Kc9Wb4Nh7Jd2Pf6Gs0Ay"
LIMIT = 256 * 1024                     # the fuzzed server's message size limit: "near the limit" stays cheap
GRPC_LIMIT = LIMIT + 64 * 1024         # what gRPC itself accepts on that server
SERVICE = "/agentmesh.v1.AgentServer/"
UNARY_METHODS = ("CreateAgent", "DeleteAgent", "FetchResult", "GetInfo", "GetState", "Handshake", "ListAgents")
SAFE_METHODS = ("reply", "ping", "get_count", "pid", "boom", "observe", "__call__", "__getattr__")
REPLY_TIMEOUT = 20.0

# Codes a server may answer malformed input with; UNKNOWN would be an exception escaping a handler.
EXPECTED_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
                  "UNAUTHENTICATED", "INTERNAL", "DEADLINE_EXCEEDED", "CANCELLED"}


def check_code(code: grpc.StatusCode, details: str, what: str) -> None:
    """An answer to malformed input must be an expected code.

    gRPC itself answers a request that does not parse as the method's message
    with UNKNOWN ("Unexpected DecodeError: Error parsing message ..."); any
    other UNKNOWN is an exception that escaped one of our handlers.
    """
    if code == grpc.StatusCode.UNKNOWN and "Error parsing message" in details:
        return
    assert code.name in EXPECTED_CODES, f"{what}: {code.name}: {details}"


#: the authenticated call metadata of the fuzzed server (set by authenticate_once)
_AUTH: dict[str, tuple[tuple[str, str], ...]] = {}
_CHANNEL: dict = {}


def authenticate_once(channel) -> None:
    """Handshake with the fuzzed server; good_metadata() carries the ticket from then on (renewed before it
    expires: a ticket opens RPCs for a minute)."""
    _AUTH["md"] = _wire.authenticate(channel, TOKEN)
    _CHANNEL["channel"], _CHANNEL["at"] = channel, time.monotonic()


def good_metadata() -> list[tuple[str, str]]:
    if time.monotonic() - _CHANNEL["at"] > 30:
        authenticate_once(_CHANNEL["channel"])
    return list(_AUTH["md"])


def _good_ticket() -> str:
    return dict(_AUTH["md"])[_wire.MD_AUTH]


def _flipped(ticket: str, at: int) -> str:
    at %= len(ticket)
    if ticket[at] == ".":
        at = (at + 1) % len(ticket)
    return ticket[:at] + ("0" if ticket[at] != "0" else "1") + ticket[at + 1:]


def with_digest(name: str, blob: bytes) -> pb.ClassRef:
    return pb.ClassRef(name=name, digest=hashlib.sha256(blob).hexdigest(), blob=blob)


class Stats:
    """What the fuzz did and what the server answered."""

    def __init__(self) -> None:
        self.requests = 0
        self.rpcs = 0
        self.session_calls = 0
        self.codes: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.actions: collections.Counter[str] = collections.Counter()

    def rpc(self, code: grpc.StatusCode) -> None:
        self.requests += 1
        self.rpcs += 1
        self.codes[code.name] += 1

    def reply(self, reply: pb.Reply) -> None:
        self.statuses[pb.ReplyStatus.Name(reply.status)] += 1

    def summary(self) -> str:
        return (f"fuzz: {self.requests} requests tried ({self.rpcs} RPCs, {self.session_calls} calls on "
                f"sessions); {len(self.codes)} distinct gRPC status codes {dict(sorted(self.codes.items()))}; "
                f"{len(self.statuses)} distinct reply statuses {dict(sorted(self.statuses.items()))}; "
                f"actions {dict(sorted(self.actions.items()))}; server crashes: 0")


# -- strategies -------------------------------------------------------------------------
ascii_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
any_text = st.text(max_size=60)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text,
                    st.binary(max_size=64))


def draw_metadata(data, authentic_allowed: bool) -> tuple[list[tuple[str, str]], bool]:
    """Random call metadata, and whether the server must accept it (right token and versions)."""
    good = _good_ticket()
    md = dict(_wire.call_metadata(good))
    wrong_tickets = st.one_of(st.none(), st.just(""), ascii_text.filter(lambda t: t != good),
                              st.integers(0, len(good)).map(lambda at: _flipped(good, at)),
                              st.sampled_from([TOKEN, good + "0", good[:-2], good.upper(), "Bearer " + good,
                                               good.replace(".", "", 1)]))
    token_ok = authentic_allowed and data.draw(st.booleans(), label="ticket ok")
    token = good if token_ok else data.draw(wrong_tickets, label="ticket")
    versions_ok = True
    for key, right in ((_wire.MD_PROTOCOL, _wire.PROTOCOL_VERSION), (_wire.MD_PYTHON, _wire.PYTHON_VERSION),
                       (_wire.MD_PICKLE, _wire.CLOUDPICKLE_MAJOR)):
        if data.draw(st.integers(0, 3), label=f"{key} fuzzed") == 0:
            value = data.draw(st.one_of(st.none(), ascii_text), label=key)
            versions_ok = versions_ok and value == right
            if value is None:
                md.pop(key)
            else:
                md[key] = value
    items = [(k, v) for k, v in md.items() if k != _wire.MD_AUTH]
    if token is not None:
        items.append((_wire.MD_AUTH, token))
    if not token_ok and data.draw(st.booleans(), label="second wrong ticket"):
        items.insert(0, (_wire.MD_AUTH, data.draw(ascii_text.filter(lambda t: t != good))))
    extra = data.draw(st.lists(st.tuples(st.from_regex(r"x-fuzz-[a-z0-9-]{1,12}", fullmatch=True), ascii_text),
                               max_size=3), label="extra metadata")
    items.extend((k, v) for k, v in extra if v)
    return items, token_ok and versions_ok


def draw_payload(data, marker: str | None = None, huge: bool = True) -> bytes:
    """A call payload: nothing, garbage, truncated or odd pickles, near or over the size limit."""
    kinds = ["empty", "random", "truncated", "valid", "valid", "wrong shape", "unknown global",
             "long random"]
    if huge:
        kinds += ["near limit", "over limit"]
    if marker:
        kinds += ["marker"] * 4
    kind = data.draw(st.sampled_from(kinds), label="payload kind")
    args = st.tuples(st.lists(scalars, max_size=4).map(tuple),
                     st.dictionaries(st.text(max_size=8), scalars, max_size=3))
    if kind == "empty":
        return b""
    if kind == "random":
        return data.draw(st.binary(max_size=300), label="random payload")
    if kind == "long random":
        n = data.draw(st.integers(1000, 20_000), label="long size")
        seed = data.draw(st.binary(min_size=1, max_size=16), label="seed")
        return (seed * (n // len(seed) + 1))[:n]
    if kind in ("valid", "truncated"):
        blob = _wire.dumps(data.draw(args, label="args"))
        if kind == "valid":
            return blob
        return blob[:data.draw(st.integers(0, len(blob) - 1), label="cut")]
    if kind == "wrong shape":
        return _wire.dumps(data.draw(st.one_of(scalars, st.tuples(scalars, scalars),
                                               st.tuples(scalars, scalars, scalars)), label="shape"))
    if kind == "unknown global":
        module = data.draw(st.sampled_from(["no_such_module_fz", "builtins", "os.path", "sample_agents"]))
        name = data.draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
            lambda n: n not in ("Echo", "Sleeper", "Recorder", "Fragile") and not n.startswith("_")))
        return f"c{module}\nZz{name}\n)R.".encode()
    if kind == "near limit":
        return b"\x80\x05" + bytes(data.draw(st.integers(LIMIT - 4096, LIMIT - 2), label="near size"))
    if kind == "over limit":
        return bytes(data.draw(st.integers(LIMIT + 1, LIMIT + 16_384), label="over size"))
    assert kind == "marker" and marker
    return file_writing_pickle(marker)


# -- the fuzzer -------------------------------------------------------------------------------
