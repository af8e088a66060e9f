"""Registry records as readers take them: verified, bound to their lease, fresh, and matching the schema.

Every reader (placement's view, the CLI, a server checking which of its
agents moved) reads a record through :func:`server_record` or
:func:`agent_record`, which check, in order: the MAC and the lease the record
was signed for (``agentmesh._trust``), the key naming the record's own id, the
required fields with their types and ranges (unknown extra fields are
tolerated, for newer writers), and for a server record its freshness. Anything
else is :class:`~agentmesh._trust.BadRecord` with the reason, which readers
report through :class:`RecordWarnings`: one WARNING per key, not per read.

Freshness. A server signs its record again at least every
:data:`REFRESH_EVERY` s even when idle, and readers ignore a server record
signed more than :data:`MAX_AGE` s ago (or that far ahead of their clock).
The lease already takes a dead server's records away within its TTL (3 s by
default; etcd's minimum is 2 s); freshness bounds what the lease cannot: an
older record of a live lease written back by someone with write access to
etcd, or a lease kept alive by someone other than the server. 5 s is a few
lease renewals apart (every TTL/3), one small write per server every 5 s;
MAX_AGE = 4 × REFRESH_EVERY leaves room for missed rewrites (an etcd election,
retries with backoff) and for the clock skew of NTP-synced machines, which
the mesh assumes (docs/registry.md).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from typing import Any, Callable, Mapping

from .._address import format_address
from .._trust import SIGNED_AT_FIELD, BadRecord, verify_record
from ..etcd import redact_url

log = logging.getLogger("agentmesh.discovery")

#: a server signs and writes its record again at least this often (s), even when nothing changed
REFRESH_EVERY = 5.0
#: readers ignore a server record signed longer ago than this (s), or this far in the future
MAX_AGE = 4 * REFRESH_EVERY
#: label keys: Prometheus label names (``prometheus-targets`` exports each as ``label_<key>`` unchanged)
LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
_MAX_TEXT = 1024
_STATUSES = ("SERVING", "DRAINING")


def printable(text: object) -> str:
    """text with every non-printable character (ANSI escapes, newlines, ...) spelled as a Python escape."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def label_problem(key: object, value: object) -> str | None:
    """What is wrong with one label (None: nothing)."""
    if not isinstance(key, str) or not LABEL_KEY.fullmatch(key) or len(key) > MAX_LABEL_KEY:
        return (f"label {printable(repr(key))}: a key is 1-{MAX_LABEL_KEY} ASCII letters, digits and underscores, "
                f"not starting with a digit (a Prometheus label name)")
    if not isinstance(value, str):
        return f"label {key!r}: the value must be a string, not {type(value).__name__}"
    if not value.isprintable() or len(value) > MAX_LABEL_VALUE:
        return (f"label {key!r}: the value {printable(repr(value[:40]))}{'...' if len(value) > 40 else ''} must be "
                f"printable text (no control characters) of at most {MAX_LABEL_VALUE} characters")
    return None


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The labels a server starts with, as a dict; ValueError naming the first bad one."""
    labels = dict(labels or {})
    for key, value in labels.items():
        problem = label_problem(key, value)
        if problem is not None:
            raise ValueError(problem)
    return labels


# -- the schema: a check per field, each returning what is wrong (None: nothing) -------------------------------
def _text(value: Any) -> str | None:
    ok = isinstance(value, str) and value.isprintable() and len(value) <= _MAX_TEXT
    return None if ok else f"printable text of at most {_MAX_TEXT} characters"


def _name(value: Any) -> str | None:
    return "non-empty text" if value == "" else _text(value)


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _count(value: Any) -> str | None:
    return None if type(value) is int and value >= 0 else "a whole number >= 0"


def _port(value: Any) -> str | None:
    return None if type(value) is int and 0 < value < 65536 else "a port number 1-65535"


def _time(value: Any) -> str | None:
    ok = type(value) in (int, float) and math.isfinite(value) and value >= 0
    return None if ok else "a time in seconds since the epoch"


def _flag(value: Any) -> str | None:
    return None if type(value) is bool else "true or false"


def _status(value: Any) -> str | None:
    return None if value in _STATUSES else " or ".join(_STATUSES)


def _names(value: Any) -> str | None:
    return None if isinstance(value, list) and all(_name(v) is None for v in value) else "a list of names"


def _labels(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "an object of label keys and values"
    return next((problem for problem in (label_problem(k, v) for k, v in value.items()) if problem), None)


_Check = Callable[[Any], "str | None"]
SERVER_FIELDS: dict[str, _Check] = {
    "server_id": _name, "host": _name, "port": _port, "address": _name, "capacity": _count, "agents": _count,
    "inflight": _count, "labels": _labels, "pid": _count, "hostname": _text, "started_at": _time,
    "version": _text, "python": _name, "classes": _names, "ship_classes": _flag, "epoch": _count,
    "status": _status, "updated_at": _time, SIGNED_AT_FIELD: _time,
}
SERVER_OPTIONAL: dict[str, _Check] = {"metrics": _name, "store": _name}
AGENT_FIELDS: dict[str, _Check] = {"agent_id": _name, "name": _string, "class": _name, "server_id": _name,
                                   "address": _name}


def _check(record: dict[str, Any], fields: dict[str, _Check], optional: dict[str, _Check]) -> None:
    missing = next((name for name in fields if name not in record), None)
    if missing is not None:
        raise BadRecord(f"it has no {missing!r} field")
    for name, check in (*fields.items(), *optional.items()):
        if name in record:
            problem = check(record[name])
            if problem is not None:
                raise BadRecord(f"its {name!r} is {printable(repr(record[name]))[:60]}, not {problem}")


def _read(key: bytes | None, path: str, value: bytes, lease: int, fields: dict[str, _Check],
          optional: dict[str, _Check], id_field: str) -> dict[str, Any]:
    record = verify_record(key, path, value, lease)
    _check(record, fields, optional)
    if record[id_field] != path.rsplit("/", 1)[-1]:
        raise BadRecord(f"it names another {id_field} than its key")
    return record


def server_record(key: bytes | None, path: str, value: bytes, lease: int, now: float | None = None) -> dict[str, Any]:
    """The server record stored at path under lease; BadRecord says why it is not a valid, fresh one."""
    record = _read(key, path, value, lease, SERVER_FIELDS, SERVER_OPTIONAL, "server_id")
    stale = staleness(record[SIGNED_AT_FIELD], now)
    if stale:
        raise BadRecord(stale)
    return record


def staleness(signed_at: float, now: float | None = None) -> str | None:
    """Why a server record signed at signed_at is no longer fresh; None while it is."""
    age = (time.time() if now is None else now) - signed_at
    if age > MAX_AGE:
        return f"it was signed {age:.0f} s ago (readers take server records up to {MAX_AGE:.0f} s old)"
    if age < -MAX_AGE:
        return f"it was signed {-age:.0f} s in the future (is this machine's clock or the server's off?)"
    return None


@dataclasses.dataclass(frozen=True)
class ServerRecord:
    """A checked server record, typed: what placement, evacuation and the CLI read (etcd keeps the JSON)."""

    server_id: str
    host: str
    port: int
    address: str            # where its agents are served: format_address(host, port), computed once
    capacity: int
    agents: int
    inflight: int
    labels: dict[str, str]
    pid: int
    hostname: str
    started_at: float
    version: str
    python: str
    classes: tuple[str, ...]
    ship_classes: bool      # whether it takes classes by value (else only those in classes)
    epoch: int
    status: str             # SERVING or DRAINING
    updated_at: float
    signed_at: float
    metrics: str = ""       # host:port of its /metrics, when it serves them
    store: str = ""         # the identity of its state store (store.StoreUrl.identity), when it has one

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ServerRecord:
        """The typed form of a record server_record() returned (extra fields of newer writers are dropped)."""
        return cls(server_id=record["server_id"], host=record["host"], port=record["port"],
                   address=format_address(record["host"], record["port"]), capacity=record["capacity"],
                   agents=record["agents"], inflight=record["inflight"], labels=dict(record["labels"]),
                   pid=record["pid"], hostname=record["hostname"], started_at=record["started_at"],
                   version=record["version"], python=record["python"], classes=tuple(record["classes"]),
                   ship_classes=record["ship_classes"], epoch=record["epoch"], status=record["status"],
                   updated_at=record["updated_at"], signed_at=record[SIGNED_AT_FIELD],
                   metrics=record.get("metrics", ""), store=record.get("store", ""))

    @property
    def free(self) -> int:
        """Room for more agents: capacity less the agents it holds (the one formula placement spreads by)."""
        return self.capacity - self.agents

    def fits(self, labels: Mapping[str, str] | None, cls_name: str | None, store: str = "") -> bool:
        """Whether it carries labels, can host cls_name (by value, or among its classes) and commits to the
        state store store (a durable agent's: its row is there; "" for any agent else)."""
        if labels and any(str(self.labels.get(k)) != str(v) for k, v in labels.items()):
            return False
        if store and self.store != store:
            return False
        return not cls_name or self.ship_classes or cls_name in self.classes


def agent_record(key: bytes | None, path: str, value: bytes, lease: int) -> dict[str, Any]:
    """The agent record stored at path under lease; BadRecord says why it is not a valid one."""
    return _read(key, path, value, lease, AGENT_FIELDS, {}, "agent_id")


class RecordWarnings:
    """Reports records a reader skips: one WARNING per key until its record is good again, however often read."""

    def __init__(self, url: str, limit: int = 10_000) -> None:
        self.url = redact_url(url)
        self._seen: set[str] = set()
        self._limit = limit

    def skip(self, path: str, why: str) -> None:
        """Log that the record at path is ignored, unless this key was reported already."""
        if path in self._seen:
            return
        if len(self._seen) < self._limit:
            self._seen.add(path)
        log.warning("registry %s: ignoring %s: %s", self.url, printable(path), why)

    def good(self, path: str) -> None:
        """The record at path is fine again: a later problem with it is reported anew."""
        self._seen.discard(path)
