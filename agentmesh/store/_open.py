"""open_store: a store URL (and the password file) checked and turned into an open StateStore."""
from __future__ import annotations

import os
from typing import Mapping

from .._config import ENV_STATE_STORE_PASSWORD_FILE, env, read_secret
from ._errors import StoreUrlError
from ._postgres import DEFAULT_CONNECT_TIMEOUT, PostgresStore
from ._sqlite import SqliteStore
from ._types import StateStore
from ._urls import parse_store_url


def open_store(url: str, password_file: str | os.PathLike[str] | None = None, *,
               connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
               environ: Mapping[str, str] | None = None) -> StateStore:
    """Open the store a URL names, its schema migrated; refused at once, naming what is wrong, when unusable.

    ``sqlite:///abs/path.db`` (``sqlite:rel/path.db``: from the current
    directory; ``?synchronous=full`` to survive a power cut, not only a crash) or ``postgresql://user@host:5432/dbname`` (``postgres://`` too).
    A PostgreSQL password is read from ``password_file``, else from the file
    that ``AGENTMESH_STATE_STORE_PASSWORD_FILE`` names; never from the URL.
    """
    parsed = parse_store_url(url)
    if parsed.kind == "sqlite":
        if password_file is not None:
            raise StoreUrlError(f"state store {parsed.shown} is a SQLite file: it takes no password file")
        return SqliteStore(parsed.path, synchronous=dict(parsed.options).get("synchronous", "normal"))
    path = os.fspath(password_file) if password_file is not None else env(ENV_STATE_STORE_PASSWORD_FILE,
                                                                            environ=environ)
    password = None
    if path:
        try:
            password = read_secret(path, "state store password file")
        except ValueError as exc:
            raise StoreUrlError(f"state store {parsed.shown}: {exc}") from None
    return PostgresStore(parsed, password=password, connect_timeout=connect_timeout)
