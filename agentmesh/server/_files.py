"""A server's file root: the one folder whose files callers may download, path-confined."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import AsyncIterator, Iterator

from ..v1 import agent_server_pb2 as pb

#: bytes per streamed chunk: well under any message size limit, large enough to keep the stream busy
CHUNK_BYTES = 256 * 1024


class FileRoot:
    """Files under one folder (realpath), served in chunks; nothing outside it, symlinks included."""

    def __init__(self, folder: str) -> None:
        path = os.path.realpath(os.path.expanduser(folder))
        if not os.path.isdir(path):
            raise ValueError(f"file_dir {folder!r} is not a folder (resolved to {path})")
        self.path = path

    def resolve(self, requested: str) -> str:
        """The real path of requested (absolute, or relative to the root); LookupError unless it is a file inside."""
        if not requested or "\x00" in requested:
            raise LookupError("no file path given" if not requested else "the file path holds a NUL byte")
        full = os.path.realpath(os.path.join(self.path, requested))
        if os.path.commonpath([full, self.path]) != self.path:
            raise LookupError(f"{requested} lies outside this server's file root {self.path}")
        if not os.path.isfile(full):
            raise LookupError(f"{requested} is not a file under this server's file root {self.path}")
        return full

    @staticmethod
    def chunks(path: str) -> Iterator[bytes]:
        """The file's bytes, CHUNK_BYTES at a time (on a worker thread: it reads the disk)."""
        with open(path, "rb") as f:
            while True:
                data = f.read(CHUNK_BYTES)
                if not data:
                    return
                yield data

    @classmethod
    async def serve(cls, path: str, executor: concurrent.futures.Executor) -> AsyncIterator[pb.FileChunk]:
        """DownloadFile's chunks of path, read on executor's threads; the first carries the size (an empty
        file answers one empty chunk)."""
        loop = asyncio.get_running_loop()
        size = os.path.getsize(path)
        chunks = cls.chunks(path)
        first = True
        while True:
            data = await loop.run_in_executor(executor, next, chunks, None)
            if data is None:
                if first:
                    yield pb.FileChunk(data=b"", size=0)
                return
            yield pb.FileChunk(data=data, size=size if first else 0)
            first = False
