"""The addresses a server answers to, so a handshake made for another address (a relay's) is refused.

A client names the address it dialled in its handshake. The server proves
itself only for an address that reaches it: its own port, with the host it
binds, the host it advertises, this machine's names, or (bound to every
interface) any local IP. Names are resolved on this side, cached, a few at a
time, so a flood of made-up names costs little.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from .._address import is_loopback, split_address

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")
_LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")
#: how long a resolved name is remembered, how many names at most, how long a lookup may take
_CACHE_S = 60.0
_CACHE_SIZE = 1024
_RESOLVE_TIMEOUT = 2.0


def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _is_local_ip(ip: str) -> bool:
    """True when ip is an address of this machine (binding a UDP socket to it succeeds)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((ip, 0))
        return True
    except OSError:
        return False


class AddressBook:
    """Which "host:port" strings reach this server; the port is set once the server has bound it."""

    def __init__(self, bind_host: str, advertise_host: str | None = None, aliases: tuple[str, ...] = ()) -> None:
        self.port: int | None = None
        self.wildcard = bind_host in _WILDCARDS
        names = {name.lower().rstrip(".") for name in (bind_host, advertise_host or "", *aliases) if name}
        if self.wildcard or is_loopback(bind_host):
            names.update(_LOOPBACK_NAMES)
        if self.wildcard:
            names.update({socket.gethostname().lower(), socket.getfqdn().lower()})
        self.names = frozenset(names - set(_WILDCARDS))
        self._bound_ips = frozenset(filter(None, (_ip(name) for name in self.names)))
        self._resolved: dict[str, tuple[float, frozenset[str]]] = {}
        self._local: dict[str, bool] = {}
        self._lookups = asyncio.Semaphore(4)

    async def start(self, port: int) -> None:
        """Learn the bound port, and the IPs of the names the server binds and advertises."""
        self.port = port
        if not self.wildcard:
            ips = set(self._bound_ips)
            for name in self.names - set(self._bound_ips):
                ips.update(await self._resolve(name))
            self._bound_ips = frozenset(ips)

    async def owns(self, address: str) -> bool:
        """True when a client that dialled address reached this server (and not something in between)."""
        host, port = split_address(address)
        if port is None or port != self.port or not host:
            return False
        host = host.lower().rstrip(".")
        if host in self.names:
            return True
        ip = _ip(host)
        ips = frozenset((ip,)) if ip else await self._resolve(host)
        return any(self._mine(candidate) for candidate in ips)

    def _mine(self, ip: str) -> bool:
        if not self.wildcard:
            return ip in self._bound_ips
        known = self._local.get(ip)
        if known is None:
            known = _is_local_ip(ip)
            if len(self._local) < _CACHE_SIZE:
                self._local[ip] = known
        return known

    async def _resolve(self, name: str) -> frozenset[str]:
        now = time.monotonic()
        cached = self._resolved.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        ips: frozenset[str] = frozenset()
        if self._lookups.locked():   # a flood of names: do not queue behind it
            return ips
        async with self._lookups:
            try:
                infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(name, None),
                                               _RESOLVE_TIMEOUT)
                ips = frozenset(str(info[4][0]).split("%")[0] for info in infos)
            except (OSError, asyncio.TimeoutError, UnicodeError):
                pass
        if len(self._resolved) >= _CACHE_SIZE:
            self._resolved.clear()
        self._resolved[name] = (now + _CACHE_S, ips)
        return ips

    def describe(self) -> str:
        """The names this server answers to, for an error message."""
        shown = sorted(self.names) + (["any local IP"] if self.wildcard else [])
        return f"{', '.join(shown)} (port {self.port})"
