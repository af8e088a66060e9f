"""The development registry: one etcd on loopback with auth on, and the secrets to use it in files.

``agentmesh registry up``, ``registry/dev-etcd.sh`` and the demo start it.
What it guards against on a shared machine or next to a browser:

- **Auth is on.** A random root password is written to ``root.password``
  (mode 0600) in the registry's directory and never put in argv, the
  environment of a process or a log; clients read it through
  ``AGENTMESH_ETCD_PASSWORD_FILE``. Without the password nobody can read or
  write a key, whichever way they reach the port.
- **No HTTP API.** etcd's JSON gateway (``/v3/kv/put`` ...) is turned off,
  so a web page cannot write keys with a ``text/plain`` POST (a "simple"
  cross-origin request, which browsers send without asking). Only gRPC and
  ``/health``, ``/version``, ``/metrics`` remain.
- **Loopback names only.** ``--host-whitelist`` refuses HTTP requests whose
  Host is not localhost, 127.0.0.1 or ::1 (DNS rebinding), and CORS allows
  no origin but etcd's own.

It also writes a random namespace token to ``namespace.token`` (0600) for
servers and clients (``AGENTMESH_TOKEN_FILE``). The directory (0700) holds
``etcd-data/`` too; started again on the same directory, the registry keeps
its data, password and token. A directory someone else could write to (not
yours, group- or world-writable) is refused, and so is a symlink in place
of a secret file or of ``etcd-data/``: they are never followed or adopted.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

from ..etcd import EtcdClient
from .etcd import EtcdProcess, free_port

log = logging.getLogger("agentmesh.etcd")

PASSWORD_FILE = "root.password"
TOKEN_FILE = "namespace.token"
DATA_DIR = "etcd-data"
ROOT = "root"
#: the only Host headers the development etcd answers over HTTP
ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1")


def hardening_args(port: int) -> list[str]:
    """etcd flags of the development registry: no JSON gateway, loopback Host names, CORS for itself only."""
    return ["--enable-grpc-gateway=false", "--host-whitelist", ",".join(ALLOWED_HOSTS),
            "--cors", f"http://127.0.0.1:{port}"]


def _check_private(path: Path, what: str) -> None:
    """ValueError naming path and what is wrong when someone else could plant or swap files in it.

    A directory of the registry must be a real directory (not a symlink), be
    the user's own and be writable by nobody else; one that does not exist yet passes.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    problems = []
    if stat.S_ISLNK(info.st_mode):
        problems.append("it is a symbolic link")
    elif not stat.S_ISDIR(info.st_mode):
        problems.append("it is not a directory")
    if os.name == "posix" and info.st_uid != os.geteuid():
        problems.append(f"it belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})")
    if info.st_mode & 0o022 and not stat.S_ISLNK(info.st_mode):
        problems.append(f"group or others may write to it (mode {stat.S_IMODE(info.st_mode):03o})")
    if problems:
        raise ValueError(f"refusing the registry's {what} {path}: {'; '.join(problems)}, so someone else could "
                         f"plant or replace its secrets and data. Give a new directory (it is made 0700), or one "
                         f"that is yours and only you can write (chmod 700) if all in it is yours")


def _secret_file(path: Path) -> tuple[str, bool]:
    """The secret in ``path``, made (random, mode 0600) if missing; and whether it was just made.

    Never through a symlink: an existing file must be a regular file of the user's
    (opened with O_NOFOLLOW; its mode is fixed on that descriptor).
    """
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDONLY | nofollow)
        except OSError as exc:
            why = "it is a symbolic link" if path.is_symlink() else exc.strerror
            raise ValueError(f"refusing the registry's secret file {path}: {why}; remove it (and the "
                             f"registry's {DATA_DIR}/ if it is not yours) to start afresh") from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or (os.name == "posix" and info.st_uid != os.geteuid()):
                raise ValueError(f"refusing the registry's secret file {path}: it is not a regular file of "
                                 f"yours; remove it (and the registry's {DATA_DIR}/) to start afresh")
            if os.name == "posix" and info.st_mode & 0o077:
                os.fchmod(fh.fileno(), 0o600)
            secret = fh.read().decode("utf-8", errors="replace").strip()
        if not secret:
            raise ValueError(f"{path} is empty; delete it and the registry's {DATA_DIR}/ to start afresh") from None
        return secret, False
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret, True


class DevRegistry:
    """A running development registry: its etcd process, directory, and the files holding its secrets."""

    def __init__(self, etcd: EtcdProcess, directory: Path, owned: bool) -> None:
        self.etcd = etcd
        self.directory = directory
        self._owned = owned

    @property
    def password_file(self) -> Path:
        """The file holding the root password (mode 0600)."""
        return self.directory / PASSWORD_FILE

    @property
    def token_file(self) -> Path:
        """The file holding the namespace token (mode 0600)."""
        return self.directory / TOKEN_FILE

    @property
    def url(self) -> str:
        """The registry URL: the user, never the password (that is in :attr:`password_file`)."""
        return f"etcd://{ROOT}@{self.etcd.endpoint}"

    @property
    def pid(self) -> int | None:
        """PID of etcd, None when stopped."""
        return self.etcd.pid

    def environment(self) -> dict[str, str]:
        """The variables that point agentmesh at this registry: URL, password file, token file."""
        return {"AGENTMESH_REGISTRY": self.url, "AGENTMESH_ETCD_PASSWORD_FILE": str(self.password_file),
                "AGENTMESH_TOKEN_FILE": str(self.token_file)}

    def exports(self) -> str:
        """Shell lines exporting :meth:`environment` (paths only: no secret is printed)."""
        return "\n".join(f"export {name}={value}" for name, value in self.environment().items())

    def stop(self) -> None:
        """Stop etcd (by PID, reaped); a temporary directory is removed with everything in it."""
        try:
            self.etcd.stop()
        finally:
            if self._owned:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "DevRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_dev_registry(directory: str | os.PathLike[str] | None = None, port: int | None = None,
                       fast: bool = True, name: str = "agentmesh-dev") -> DevRegistry:
    """Start the development registry in ``directory`` (a temporary one by default) on ``port`` (free by default).

    A fresh directory gets a root password, a namespace token and an etcd with
    auth turned on before this returns; an existing one is reused as it is.
    etcd is stopped again if anything fails.
    """
    owned = directory is None
    folder = Path(tempfile.mkdtemp(prefix="agentmesh-registry-") if owned else directory).resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder, "directory")
    data_dir = folder / DATA_DIR
    _check_private(data_dir, f"{DATA_DIR}/ directory")
    had_data = (data_dir / "member").exists()
    password, new_password = _secret_file(folder / PASSWORD_FILE)
    _secret_file(folder / TOKEN_FILE)
    if had_data and new_password:
        (folder / PASSWORD_FILE).unlink()
        raise ValueError(f"{data_dir} holds etcd data but {folder / PASSWORD_FILE} was missing, so its root "
                         f"password is unknown; start with another --data-dir, or delete {data_dir}")
    port = port or free_port()
    etcd = EtcdProcess(name=name, extra_args=hardening_args(port))
    registry = DevRegistry(etcd, folder, owned)
    try:
        etcd.start(data_dir=str(data_dir), client_port=port, fast=fast)
        asyncio.run(_secure(etcd.endpoint, password, fresh=not had_data))
    except BaseException:
        registry.stop()
        if not had_data:   # half set up: the next start begins afresh (with the same secrets)
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    log.info("development registry %s up (pid %s, directory %s)", registry.url, etcd.pid, folder)
    return registry


async def _secure(endpoint: str, password: str, fresh: bool) -> None:
    """On a fresh etcd: root user and role, auth on. Then check root's password opens it and root is alone."""
    if fresh:
        async with EtcdClient(endpoint) as open_etcd:
            await open_etcd.user_add(ROOT, password)
            await open_etcd.role_add(ROOT)
            await open_etcd.user_grant_role(ROOT, ROOT)
            await open_etcd.auth_enable()
    async with EtcdClient(endpoint, user=ROOT, password=password) as root:
        users = await root.user_list()
    if users != [ROOT]:
        raise RuntimeError(f"etcd at {endpoint} has users {users} besides {ROOT!r}: someone added them while "
                           f"auth was off; delete the registry's data and start again")
