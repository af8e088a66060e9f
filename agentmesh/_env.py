"""What a process reads from outside its code: the ``AGENTMESH_*`` variables, and secrets kept in files.

``env`` and ``env_flag`` read a variable (empty counts as unset);
``read_secret`` reads a token or password from a file, so it stays out of
argv, the environment and shell history. Nothing here logs a secret.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

log = logging.getLogger("agentmesh")


def env(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """An AGENTMESH_* variable; empty counts as unset."""
    return (os.environ if environ is None else environ).get(name) or default


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """An AGENTMESH_* on/off variable: 1/true/yes is on, 0/false/no or unset is off, anything else a ValueError."""
    value = (env(name, "", environ) or "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("", "0", "false", "no"):
        return False
    raise ValueError(f"{name}={value!r} is neither on (1, true, yes) nor off (0, false, no)")


def read_secret(path: str, what: str = "token file") -> str:
    """The secret held in a file, read now: one line, its trailing newline stripped.

    A file that cannot be read, is empty or holds more than one line is a
    ValueError naming it; one that group or others may read or write gets a
    warning (``chmod 600``). The secret itself is never logged.
    """
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read()
    except OSError as exc:
        raise ValueError(f"{what} {path!r} cannot be read ({exc.strerror or exc}); give the path of a "
                         f"readable file holding the secret on one line") from None
    try:
        secret = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path!r} is not UTF-8 text; put the secret on one line") from None
    if not secret.strip():
        raise ValueError(f"{what} {path!r} is empty; put the secret on its first line")
    if "\n" in secret or "\r" in secret:
        raise ValueError(f"{what} {path!r} holds more than one line; put the secret alone on one line")
    if os.name == "posix" and mode & 0o077:
        log.warning("agentmesh: %s %s is accessible to group or others (mode %03o); run chmod 600 %s",
                    what, path, mode & 0o777, path)
    return secret
