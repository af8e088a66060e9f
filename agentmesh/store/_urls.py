"""State store URLs: ``sqlite:///abs/path.db``, ``sqlite:relative/path.db``, ``postgresql://user@host:5432/db``.

A PostgreSQL password never travels in the URL (it would show in argv, logs
and errors): it comes from a file, and a URL carrying one is refused without
echoing it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import urllib.parse

from .._address import redact_userinfo
from ._errors import StoreUrlError

DEFAULT_PG_PORT = 5432
#: libpq options a PostgreSQL URL may carry as ``?name=value`` (TLS and the connect timeout)
PG_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "connect_timeout")
_FORMS = ("sqlite:///absolute/path/state.db, sqlite:relative/path/state.db (from the current directory), "
          "postgresql://user@host:5432/dbname")


#: SQLite's synchronous settings a URL may choose (?synchronous=...)
SQLITE_SYNCHRONOUS = ("normal", "full")


@dataclasses.dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL: ``kind`` "sqlite" (``path``, absolute) or "postgresql" (host, port, dbname, user)."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = DEFAULT_PG_PORT
    dbname: str = ""
    user: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    @property
    def identity(self) -> str:
        """Which store this is, the same from every process that opens it (a SQLite file: this machine and the
        file's real path; PostgreSQL: host, port and database), as a short digest: servers publish it in their
        registry records, so a durable agent is placed only where its row is."""
        if self.kind == "sqlite":
            where = f"sqlite\0{socket.gethostname()}\0{os.path.realpath(self.path)}"
        else:
            where = f"postgresql\0{self.host.lower()}\0{self.port}\0{self.dbname}"
        return hashlib.sha256(where.encode()).hexdigest()[:16]

    @property
    def shown(self) -> str:
        """The URL for messages and logs: it never holds a secret."""
        if self.kind == "sqlite":
            return f"sqlite://{self.path}" + ("?" + urllib.parse.urlencode(self.options) if self.options else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{urllib.parse.quote(self.user, safe='')}@" if self.user else ""
        query = "?" + urllib.parse.urlencode(self.options) if self.options else ""
        return f"postgresql://{user}{host}:{self.port}/{urllib.parse.quote(self.dbname, safe='')}{query}"


def store_identity(url: str | None) -> str:
    """StoreUrl.identity of url; "" for no store, or a URL that does not parse (nothing matches it)."""
    if not url:
        return ""
    try:
        return parse_store_url(url).identity
    except StoreUrlError:
        return ""


def redact_store_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages; a URL without one comes back unchanged.

    Everything between the user name's colon and the last ``@`` is masked, so
    a password holding an unencoded ``@``, ``/`` or ``?`` does not leak either;
    so is the value of a ``password=`` option, up to the next ``&``.
    """
    url = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)
    return redact_userinfo(url)


def parse_store_url(url: str) -> StoreUrl:
    """Check and split a store URL; StoreUrlError naming what is wrong (the URL shown without its secret)."""
    if not isinstance(url, str) or not url.strip():
        raise StoreUrlError(f"no state store URL given; expected one of {_FORMS}")
    text = url.strip()
    shown = redact_store_url(text)
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sqlite", "postgresql", "postgres"):
        raise StoreUrlError(f"state store URL {shown!r}: unknown kind {scheme!r}; expected one of {_FORMS}")
    if scheme == "sqlite":
        return _sqlite(rest, shown)
    return _postgres(text, shown)


def _sqlite(rest: str, shown: str) -> StoreUrl:
    """``///abs`` (and ``////abs``) is an absolute path; a path without ``//`` is relative to the current directory."""
    if "#" in rest:
        raise StoreUrlError(f"state store URL {shown!r}: a SQLite URL takes no fragment")
    rest, _, query = rest.partition("?")
    options = tuple(urllib.parse.parse_qsl(query, keep_blank_values=True))
    for name, value in options:
        if name != "synchronous" or value.lower() not in SQLITE_SYNCHRONOUS:
            raise StoreUrlError(f"state store URL {shown!r}: a SQLite URL takes only ?synchronous=normal (the "
                                f"default: a commit survives any process's death) or ?synchronous=full (a power "
                                f"cut too, at the cost of an fsync per commit), not {name}={value!r}")
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host:
            raise StoreUrlError(f"state store URL {shown!r}: a SQLite URL names no host ({host!r}); "
                                f"write sqlite:///absolute/path/state.db")
        path = "/" + path.lstrip("/") if path.strip("/") else ""
    else:
        path = rest
    if not path or path.endswith("/") or path in (":memory:", "/:memory:"):
        raise StoreUrlError(f"state store URL {shown!r}: names no database file; expected {_FORMS}")
    return StoreUrl(kind="sqlite", path=os.path.abspath(urllib.parse.unquote(path)),
                    options=tuple((name, value.lower()) for name, value in options))


def _postgres(text: str, shown: str) -> StoreUrl:
    """``postgresql://[user@]host[:port]/dbname[?sslmode=...]``; a password in it is refused."""
    carries = StoreUrlError(f"state store URL {shown!r} carries a password: drop it from the URL and put it in "
                            f"a file (mode 0600) named by AGENTMESH_STATE_STORE_PASSWORD_FILE (or agentmesh "
                            f"server --state-store-password-file, RpcAgentServerLauncher(state_store_password_file=))")
    if shown != text:                # in the user part, or as a password= option: refused before anything else
        raise carries
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise StoreUrlError(f"state store URL {shown!r}: bad host or port") from None
    if parts.password is not None:   # an empty one ("user:@host")
        raise carries
    if not parts.hostname:
        raise StoreUrlError(f"state store URL {shown!r} names no host; expected postgresql://user@host:5432/dbname")
    raw_dbname = parts.path.lstrip("/")
    dbname = urllib.parse.unquote(raw_dbname)
    if not dbname or "/" in raw_dbname:
        raise StoreUrlError(f"state store URL {shown!r} names no database (or more than a database name) after "
                            f"the host; expected postgresql://user@host:5432/dbname")
    if parts.fragment:
        raise StoreUrlError(f"state store URL {shown!r}: a PostgreSQL URL takes no fragment")
    options = tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    unknown = sorted({name for name, _ in options} - set(PG_OPTIONS))
    if unknown:
        raise StoreUrlError(f"state store URL {shown!r}: unknown option(s) {', '.join(unknown)}; a PostgreSQL URL "
                            f"accepts {', '.join(PG_OPTIONS)} (the password goes in a file, never the URL)")
    return StoreUrl(kind="postgresql", host=parts.hostname, port=port or DEFAULT_PG_PORT, dbname=dbname,
                    user=urllib.parse.unquote(parts.username) if parts.username else None, options=options)
