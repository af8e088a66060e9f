"""Keys and values: str/bytes conversion and prefix ranges."""
from __future__ import annotations


def to_bytes(data: bytes | str) -> bytes:
    """UTF-8 encode str; pass bytes through."""
    return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)


def to_str(data: bytes) -> str:
    """Decode a key (lossless for any bytes)."""
    return data.decode("utf-8", "surrogateescape")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # empty prefix (or all 0xff): every key
