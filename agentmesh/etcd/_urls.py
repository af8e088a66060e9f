"""Registry URLs and endpoint lists: ``etcd[s]://[user:password@]h1:2379,h2:2379``."""
from __future__ import annotations

import urllib.parse
from typing import Sequence

from .._address import redact_userinfo

DEFAULT_PORT = 2379


def parse_registry_url(url: str) -> dict:
    """Split ``etcd[s]://[user:password@]h1:2379,h2:2379`` into client settings.

    Returns ``{"endpoints": ["h1:2379", ...], "tls": bool, "user": str|None,
    "password": str|None}``. ``etcds://`` means TLS; a host without a port
    gets 2379; user and password may be percent-encoded.
    """
    text = url.strip()
    shown = redact_url(text)
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("etcd", "etcds"):
        raise ValueError(f"registry URL {shown!r}: expected etcd://host:port[,host:port...] "
                         "or etcds://... for TLS")
    netloc, _, path = rest.partition("/")
    if path.strip("/") or "?" in netloc or "#" in netloc:
        raise ValueError(f"registry URL {shown!r}: no path or query is allowed after the hosts")
    user = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        name, has_pw, secret = userinfo.partition(":")
        user = urllib.parse.unquote(name) or None
        password = urllib.parse.unquote(secret) if has_pw else None
    endpoints = [with_port(h.strip(), shown) for h in netloc.split(",") if h.strip()]
    if not endpoints:
        raise ValueError(f"registry URL {shown!r} names no host")
    return {"endpoints": endpoints, "tls": scheme == "etcds",
            "user": user, "password": password}


def redact_url(url: str) -> str:
    """The URL with its password, if any, replaced by ``***`` (for logs and messages).

    ``etcd://root:secret@h:2379`` -> ``etcd://root:***@h:2379``; a URL without
    a password comes back unchanged. Everything between the user name's colon
    and the last ``@`` is masked, so a password holding an unencoded ``@`` or
    ``/`` does not leak either, nor one in a URL missing its scheme
    (``root:secret@h`` -> ``root:***@h``).
    """
    return redact_userinfo(url)


def with_port(host: str, url: str) -> str:
    """``host`` -> ``host:2379``; checks the port is a number (``url``, redacted, is for the error)."""
    if host.startswith("["):
        addr, _, port = host[1:].partition("]")
        port = port.lstrip(":")
        hostpart = f"[{addr}]"
    elif host.count(":") == 1:
        hostpart, _, port = host.partition(":")
    elif ":" in host:
        raise ValueError(f"registry URL {url!r}: write IPv6 addresses as [addr]:port")
    else:
        hostpart, port = host, ""
    if not port:
        port = str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536 or not hostpart:
        raise ValueError(f"registry URL {url!r}: bad endpoint {host!r}")
    return f"{hostpart}:{port}"


def normalize_endpoints(endpoints: Sequence[str] | str) -> tuple[list[str], bool]:
    """Endpoints as ``host:port`` strings, and whether any of them asked for TLS."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result: list[str] = []
    tls = False
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "://" in item:
            parsed = parse_registry_url(item)
            tls = tls or parsed["tls"]
            result.extend(parsed["endpoints"])
        else:
            result.append(with_port(item, redact_url(item)))
    if not result:
        raise ValueError("EtcdClient needs at least one endpoint")
    return result, tls
