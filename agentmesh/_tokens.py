"""Namespace tokens: what makes one a key, how to make one, and this user's local token (the no-token default).

A token is the key of a namespace's proofs. One handshake transcript lets
anyone test guesses offline, so a token must be out of reach of guessing, not
merely secret: weak ones are refused where they are given. A process given no
token uses this user's local token, a random one kept in the user's private
folder (0600), so a server started without a token admits this user's
processes and no other local user's.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import stat

from ._userdir import user_dir

log = logging.getLogger("agentmesh")

#: the estimated strength a token needs to be a key (bits)
TOKEN_BITS = 128
MAKE_TOKEN = "`agentmesh token new --output FILE` (a new 0600 file; give it as --token-file or AGENTMESH_TOKEN_FILE)"
LOCAL_TOKEN_FILE = "local.token"


def new_token() -> str:
    """A token that is a key: 256 random bits as URL-safe text."""
    return secrets.token_urlsafe(32)


def token_weakness(token: str) -> str | None:
    """Why token is too short or too guessable to be a key; None when it will do.

    The estimate is its length (at most three characters for each distinct one,
    so repeats add little) times log2 of the alphabet its character classes span:
    32 random hex digits pass, a short word repeated does not.
    """
    if not token or token != token.strip():
        return "it is empty or has white space around it"
    alphabet = sum(size for size, present in ((26, any(c.islower() for c in token)),
                                              (26, any(c.isupper() for c in token)),
                                              (10, any(c.isdigit() for c in token)),
                                              (32, any(not c.isalnum() for c in token))) if present)
    bits = min(len(token), 3 * len(set(token))) * math.log2(max(alphabet, 2))
    if bits < TOKEN_BITS:
        return (f"it is too short or too guessable to be a key (about {bits:.0f} bits of the {TOKEN_BITS} "
                f"needed): one handshake transcript lets anyone try guesses offline")
    return None


def check_token(token: str | None, source: str) -> None:
    """ValueError naming source when token is given but is no key (how to make one included)."""
    if token is None:
        return
    why = token_weakness(token)
    if why is not None:
        raise ValueError(f"agentmesh: the token given to {source} is refused: {why}. Make one with {MAKE_TOKEN}")


_local: dict[str, str] = {}


def local_token() -> str:
    """This user's local token (made now if missing): the token of a process that was given none."""
    path = os.path.join(user_dir(), LOCAL_TOKEN_FILE)
    if path not in _local:
        _local[path] = _read_or_make(path)
    return _local[path]


def _read_or_make(path: str) -> str:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:   # another process made it meanwhile
            return _read_or_make(path)
        with os.fdopen(fd, "w") as f:
            f.write(new_token() + "\n")
        log.info("agentmesh: made this user's local token %s (the token of processes given none)", path)
        return _read_or_make(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(f"agentmesh: {path} is a symbolic link; remove it (agentmesh makes the local "
                                  f"token again)") from None
        raise
    with os.fdopen(fd) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise PermissionError(f"agentmesh: the local token {path} must be a regular 0600 file of this user; "
                                  f"remove it (agentmesh makes it again)")
        token = f.read().strip()
    check_token(token, path)
    return token
