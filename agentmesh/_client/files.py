"""Files a reply names on its server: fetched over the authenticated session's channel into a local folder.

A server started with a file root (``file_dir``) tells its callers that root
in its Hello. A reply that is a message whose ``url`` (or a content block's
``url``) lies under it arrives with that url replaced by the path of a local
copy, as AgentScope's placeholders did; the server refuses any path outside
its root.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from typing import Any

import grpc

from .. import _status, errors
from ..v1 import agent_server_pb2 as pb
from .connection import Connection

_BLOCK_KINDS = ("image", "audio", "video", "file")


class Downloads:
    """Where this process keeps downloaded files: a folder given in settings, else one temporary folder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: str | None = None

    def folder(self, configured: str | None) -> str:
        """The folder to save into, made on first use (files stay after the process ends: they are the user's)."""
        if configured:
            os.makedirs(configured, exist_ok=True)
            return configured
        with self._lock:
            if self._made is None:
                self._made = tempfile.mkdtemp(prefix="agentmesh-files-")
            return self._made


def under(root: str, url: Any) -> bool:
    """True when url is an absolute path inside root (the server's side; it checks again, resolving links)."""
    if not root or not isinstance(url, str) or not os.path.isabs(url):
        return False
    return os.path.commonpath([os.path.normpath(url), root]) == root


def names_files(value: Any, root: str) -> bool:
    """True when value is a message naming at least one file under root (so localize() has work)."""
    return bool(root) and any(True for _ in _urls(value, root))


def _urls(value: Any, root: str):
    url = getattr(value, "url", None)
    for item in (url if isinstance(url, list) else [url]):
        if under(root, item):
            yield item
    content = getattr(value, "content", None)
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") in _BLOCK_KINDS and under(root, block.get("url")):
                yield block["url"]


async def download(conn: Connection, path: str, folder: str) -> str:
    """Copy the server's file at path into folder, chunk by chunk; the local path. ServerUnavailableError or
    FileNotFoundError (with the server's reason) when it cannot be had."""
    digest = hashlib.sha256(f"{conn.server_id}:{path}".encode()).hexdigest()[:10]
    local = os.path.join(folder, f"{digest}_{os.path.basename(path) or 'file'}")
    partial = local + ".part"
    try:
        with open(partial, "wb") as out:
            async for chunk in conn.stream("DownloadFile", pb.FileRequest(path=path)):
                out.write(chunk.data)
    except grpc.aio.AioRpcError as exc:
        os.unlink(partial)
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise FileNotFoundError(exc.details()) from None
        raise _status.rpc_error(exc, conn.address, f"downloading {path}") from None
    os.replace(partial, local)
    return local


async def localize(value: Any, conn: Connection, folder: str) -> Any:
    """value with each url under conn's file root replaced by a downloaded copy's path (the same object)."""
    root = conn.file_dir
    copies: dict[str, str] = {}
    for url in _urls(value, root):
        if url not in copies:
            copies[url] = await download(conn, url, folder)
    if not copies:
        return value
    url = getattr(value, "url", None)
    try:
        if isinstance(url, list):
            value.url = [copies.get(u, u) if isinstance(u, str) else u for u in url]
        elif isinstance(url, str) and url in copies:
            value.url = copies[url]
        content = getattr(value, "content", None)
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and isinstance(block.get("url"), str) and block["url"] in copies:
                    block["url"] = copies[block["url"]]
    except AttributeError as exc:   # a read-only message type: say which file could not be swapped in
        raise errors.PayloadError(f"downloaded {', '.join(copies)} but could not set the reply's url: {exc}") \
            from None
    return value
