"""Child mode: a few local server processes shared by every child-mode agent of a runtime.

Child servers listen on loopback in plaintext, behind their parent's token:
they need no server certificate, which a client process does not have. Each
lists its port in a private folder of its parent's (the roster), so the
parent and the other children know to dial it in plaintext, while every
other address gets TLS when the process has it. The roster is written before
the child reports ready, so it never lags behind a placement.

Rosters live in the user's private folder (``_userdir.user_dir()``), never in
the shared temp folder, where any user of the machine could plant entries.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
from typing import Callable

from .._address import host_of, is_loopback
from .._config import ServerConfig
from .._process import ServerProcess
from .._userdir import user_dir

log = logging.getLogger("agentmesh")


#: a roster's name in the user's folder: the prefix, its owner's pid, "-", a random part
_ROSTER_PREFIX = "children-"
#: pids above this are no process's (Linux allows 2**22; this leaves room for other systems)
_MAX_PID = 2**31 - 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's process: alive
        return True
    return True


def _remove_stale_rosters(folder: str) -> None:
    """Remove the rosters in folder of processes that died without cleaning up (SIGKILL): their pid is in the
    name. Whatever else is there (a name that does not parse, a link, a file) is left alone, never a crash."""
    for name in os.listdir(folder):
        if not name.startswith(_ROSTER_PREFIX):
            continue
        pid = name[len(_ROSTER_PREFIX):].split("-", 1)[0]
        path = os.path.join(folder, name)
        try:
            if not pid.isdigit() or not 0 < int(pid) <= _MAX_PID:
                raise ValueError(f"{pid!r} is not a pid")
            if _alive(int(pid)):
                continue
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise ValueError("not a folder of this user's")
        except (ValueError, OSError) as exc:
            log.debug("agentmesh: %s is not a roster of child servers (%s); left alone", path, exc)
            continue
        shutil.rmtree(path, ignore_errors=True)


def _make_roster() -> str:
    """A new roster folder (0700) in the user's private folder; a private temporary one if that is refused."""
    try:
        folder = user_dir()
        _remove_stale_rosters(folder)
    except OSError as exc:
        log.warning("agentmesh: child servers list their ports in a temporary folder instead (%s)", exc)
        return tempfile.mkdtemp(prefix=f"agentmesh-{_ROSTER_PREFIX}")
    return tempfile.mkdtemp(prefix=f"{_ROSTER_PREFIX}{os.getpid()}-", dir=folder)


class ChildPool:
    """Child servers, started on first use; config() is the ServerConfig of a new one (token, limits, TLS)."""

    def __init__(self, config: Callable[[], ServerConfig], size: Callable[[], int],
                 serves: Callable[[], tuple[str, str]] = lambda: ("default", "")) -> None:
        self._config = config
        self._size = size
        #: the (namespace, token) placements need now: children started under other settings take no more agents
        self._serves = serves
        self._lock = threading.Lock()
        self._children: list[ServerProcess] = []
        self._placed: dict[ServerProcess, int] = {}
        self._roster: str | None = None
        self._roster_lock = threading.Lock()   # roster() runs inside _start, which holds _lock
        #: in a child server: the roster of its parent's children, its siblings (None elsewhere)
        self.siblings: str | None = None
        #: in a child server: the namespace and token its siblings serve (they are its own)
        self._sibling_credentials: tuple[str, str | None] = ("default", None)

    def roster(self) -> str:
        """The private folder (0700) where this pool's children list their ports; made on first use."""
        with self._roster_lock:
            if self._roster is None:
                self._roster = _make_roster()
                log.debug("child servers list their ports in %s", self._roster)
            return self._roster

    def join(self, roster: str, port: int, namespace: str, token: str | None) -> None:
        """In a child server: list its own port in its parent's roster and dial its siblings in plaintext.

        Its siblings serve the namespace and token it serves, so those are what they must prove.
        """
        self.siblings = roster
        self._sibling_credentials = (namespace, token)
        with open(os.path.join(roster, str(port)), "w"):
            pass

    @property
    def processes(self) -> list[ServerProcess]:
        """The child servers running now."""
        with self._lock:
            return list(self._children)

    def _start(self, n: int) -> None:
        for _ in range(n):
            child = ServerProcess(self._config(), fork=True)
            self._children.append(child)
            self._placed[child] = 0

    def choose(self, exclude: set[str] | frozenset = frozenset()) -> ServerProcess:
        """The child with the fewest agents placed so far (starting the pool on first use)."""
        with self._lock:
            for dead in [c for c in self._children if not c.alive]:
                self._children.remove(dead)
                self._placed.pop(dead, None)
                self._unlist(dead)
            namespace, token = self._serves()
            current = [c for c in self._children if c.config.namespace == namespace and c.config.token == token]
            wanted = self._size()
            if len(current) < wanted:   # first use, replacing a dead child, or the settings changed
                self._start(wanted - len(current))
                current = [c for c in self._children if c.config.namespace == namespace and c.config.token == token]
            candidates = [c for c in current if not c.address or c.address not in exclude]
            if not candidates:
                self._start(1)
                candidates = self._children[-1:]
            child = min(candidates, key=lambda c: self._placed[c])
            self._placed[child] += 1
        return child

    def grow(self) -> ServerProcess:
        """Start one more child (the others are full)."""
        with self._lock:
            self._start(1)
            return self._children[-1]

    def credentials_of(self, address: str) -> tuple[str, str | None] | None:
        """(namespace, token) of the child of this pool, or sibling of this child server, at address; else None."""
        for child in self.processes:
            if child.address == address:
                return child.config.namespace, child.config.token
        if self._is_sibling(address):
            return self._sibling_credentials
        return None

    def _is_sibling(self, address: str) -> bool:
        if self.siblings is None or not is_loopback(host_of(address)):
            return False
        return os.path.exists(os.path.join(self.siblings, address.rsplit(":", 1)[-1]))

    def is_plaintext(self, address: str) -> bool:
        """True for a child of this pool, or a sibling of this child server: loopback, plaintext, behind a token."""
        return any(child.address == address for child in self.processes) or self._is_sibling(address)

    def _unlist(self, child: ServerProcess) -> None:
        """Take a dead child's port off the roster, so nobody dials whatever listens there next in plaintext."""
        if self._roster is not None and child.port:
            try:
                os.unlink(os.path.join(self._roster, str(child.port)))
            except FileNotFoundError:
                pass

    def stop(self) -> None:
        """Stop every child now (their agents end with them) and remove the roster."""
        with self._lock:
            children, self._children = self._children, []
            self._placed.clear()
        with self._roster_lock:
            roster, self._roster = self._roster, None
        for child in children:
            child.stop(timeout=3.0, drain=False)
        if roster is not None:
            shutil.rmtree(roster, ignore_errors=True)
