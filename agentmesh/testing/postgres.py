"""Run a local PostgreSQL server for tests: a fresh cluster in a temporary folder, on a free loopback port.

The binaries come from ``PATH``, else the newest ``/usr/lib/postgresql/*/bin``
(Debian's ``postgresql`` package). PostgreSQL refuses to run as root, so as
root the cluster belongs to, and runs as, the ``postgres`` user. Every
connection needs a password (scram-sha-256); it is in a 0600 file, never in a
URL. Start-up waits on the server saying it is ready, not a sleep; the server
is stopped by PID, and at interpreter exit if its owner forgot.
"""
from __future__ import annotations

import atexit
import glob
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from ._reap import end_process
from .etcd import free_port

log = logging.getLogger("agentmesh.testing")

_INSTALL_HINT = "install PostgreSQL (`apt-get install postgresql`) or put its bin/ folder on PATH"
#: the user who runs the server when this process is root
RUN_AS = "postgres"


def find_postgres_binary(name: str = "postgres") -> str:
    """Path of a PostgreSQL program (postgres, initdb): PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0, reverse=True)
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"no PostgreSQL {name} binary found; {_INSTALL_HINT}")


class PostgresProcess:
    """One PostgreSQL server of its own as a child process, listening on 127.0.0.1 only.

    ``start()`` makes the cluster (``initdb``) the first time and returns once
    the server accepts connections; ``halt()`` shuts it down keeping its data
    and port, so ``start()`` brings the same databases back; ``stop()`` ends
    it and removes its folder. The superuser is :attr:`user`, its password in
    :attr:`password_file`.
    """

    user = "agentmesh"

    def __init__(self, name: str = "agentmesh-postgres", host: str = "127.0.0.1", fast: bool = True) -> None:
        """``fast`` turns off fsync and synchronous commits: fine for tests, never for data that matters."""
        self.name, self.host, self.fast = name, host, fast
        self.port: int | None = None
        self.directory: str | None = None
        self.password = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def data_dir(self) -> str:
        """The cluster's data folder."""
        return os.path.join(self.directory or "", "data")

    @property
    def password_file(self) -> str:
        """The file holding the superuser's password (mode 0600)."""
        return os.path.join(self.directory or "", "password")

    @property
    def log_path(self) -> str:
        """The server's log (initdb's output too)."""
        return os.path.join(self.directory or "", "postgres.log")

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, None when stopped."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    def url(self, dbname: str = "postgres") -> str:
        """A state store URL of one of its databases: the user, never the password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def environment(self) -> dict[str, str]:
        """The variable that points agentmesh at the password file."""
        return {"AGENTMESH_STATE_STORE_PASSWORD_FILE": self.password_file}

    def _run_as(self) -> dict:
        """Popen's arguments that run a program as the ``postgres`` user when this process is root."""
        if os.geteuid() != 0:
            return {}
        return {"user": RUN_AS, "group": pwd.getpwnam(RUN_AS).pw_gid, "extra_groups": []}

    def _init_cluster(self) -> None:
        """A temporary folder (owned by the server's user), the password file, and ``initdb`` into it."""
        self.directory = tempfile.mkdtemp(prefix="agentmesh-postgres-")
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            for path in (self.directory, self.password_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        args = [find_postgres_binary("initdb"), "-D", self.data_dir, "-U", self.user, "--pwfile",
                self.password_file, "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C"]
        if self.fast:
            args.append("--no-sync")
        with open(self.log_path, "ab") as out:
            done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=self.directory, timeout=300, **self._run_as())
        if done.returncode != 0:
            raise RuntimeError(f"initdb for {self.name} failed (code {done.returncode}):\n{self.log_tail()}")

    def start(self, timeout: float = 120.0) -> "PostgresProcess":
        """Start the server (making its cluster the first time) and wait until it accepts connections."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        try:
            if self.directory is None:
                self._init_cluster()
            self.port = self.port or free_port(self.host)
            args = [find_postgres_binary("postgres"), "-D", self.data_dir, "-p", str(self.port),
                    "-k", self.directory, "-c", f"listen_addresses={self.host}", "-c", "max_connections=40",
                    "-c", "shared_buffers=16MB"]
            if self.fast:
                args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            self._log_file = open(self.log_path, "ab")
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                          stderr=subprocess.STDOUT, cwd=self.directory, **self._run_as())
            atexit.unregister(self._stop_at_exit)
            atexit.register(self._stop_at_exit)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.debug("started %s pid %s on %s:%s", self.name, self.pid, self.host, self.port)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Poll until postmaster.pid says "ready" and the port accepts a connection; raise with the log tail."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"{self.name} exited (code {code}) during start-up:\n{self.log_tail()}")
            if self._says_ready() and self._accepts():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def _says_ready(self) -> bool:
        """Whether the status line of postmaster.pid (its 8th) reads "ready"."""
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as fh:
                lines = fh.read().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _accepts(self) -> bool:
        """Whether the port takes a TCP connection."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def create_database(self, dbname: str) -> str:
        """Create a database (needs psycopg) and return its state store URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.url(dbname)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            with open(self.log_path, "rb") as fh:
                return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def halt(self, grace: float = 20.0) -> None:
        """Shut the server down (fast shutdown: SIGINT, then SIGKILL after ``grace`` s), keeping its data and port."""
        proc, self._proc = self._proc, None
        end_process(proc, signal.SIGINT, grace)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, grace: float = 20.0) -> None:
        """Shut the server down and remove its folder."""
        atexit.unregister(self._stop_at_exit)
        try:
            self.halt(grace)
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    def _stop_at_exit(self) -> None:
        """The atexit hook: stop a server its owner forgot (best effort)."""
        try:
            self.stop(grace=5.0)
        except Exception:
            log.exception("could not stop %r", self)

    def __enter__(self) -> "PostgresProcess":
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PostgresProcess {self.name} {self.host}:{self.port} pid={self.pid}>"
