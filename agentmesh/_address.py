"""Addresses of agent servers: formatting, loopback checks, what to advertise. Written once, used everywhere."""
from __future__ import annotations

import ipaddress
import socket


def format_address(host: str, port: int | str | None) -> str:
    """"host:port", with an IPv6 host in brackets; ValueError for a missing or non-numeric port."""
    if port is None:
        raise ValueError(f"host {host!r} needs a port too")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"port must be a number, got {port!r}") from None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def host_of(address: str) -> str:
    """The host of a "host:port" address (an IPv6 host without its brackets)."""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    return host.strip("[]")


def split_address(address: str) -> tuple[str, int | None]:
    """(host, port) of a "host:port" address (an IPv6 host without brackets); port None when missing or not a number."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, ""
    return host, int(port) if port.isdigit() and len(port) <= 5 else None


def is_loopback(host: str) -> bool:
    """True when host only listens on this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def advertised_host(host: str) -> str:
    """The host other machines should dial: the bound one, or this machine's address for a wildcard."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return socket.gethostname()
    return host


#: port values that mean "pick a free port" (AgentScope treats an unusable port so)
AUTO_PORTS = (None, "", 0, -1, "0", "-1")


def check_port(port: object, what: str = "port") -> int | None:
    """A port to listen on as an int, or None for "pick a free one" (None, 0 or -1); ValueError otherwise."""
    if port in AUTO_PORTS:
        return None
    try:
        number = int(port)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{what} {port!r} is not a port number: give 1-65535, or None/0/-1 for a free "
                         f"port") from None
    if isinstance(port, bool) or str(number) != str(port).strip() or not 0 < number <= 65535:
        raise ValueError(f"{what} {port!r} is outside 1-65535: give 1-65535, or None/0/-1 for a free port")
    return number


def redact_userinfo(url: str) -> str:
    """url with the password of its user info masked (``user:***@host``); the last ``@`` is the one, so a
    password holding an unencoded ``@`` or ``/`` does not leak, nor one in a URL missing its scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hosts = rest.rpartition("@")
    name, colon, secret = userinfo.partition(":")
    if not (at and colon and secret):
        return url
    return f"{scheme}{sep}{name}:***@{hosts}"
