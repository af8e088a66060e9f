"""A server's file root: the one folder whose files callers may download, path-confined.

A file is opened beneath the root's directory descriptor one component at a
time, never following a symbolic link (``O_NOFOLLOW``), and what was opened
is checked (a regular file), not the path: someone who can write in the root
cannot swap a file for a link between a check and the open.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import stat
from typing import IO, AsyncIterator, Iterator

from ..v1 import agent_server_pb2 as pb

#: bytes per streamed chunk: well under any message size limit, large enough to keep the stream busy
CHUNK_BYTES = 256 * 1024


class FileRoot:
    """Files under one folder (realpath), served in chunks; nothing outside it.

    Symbolic links beneath the root are refused, all of them, even those that
    point inside: following none is what keeps a swapped-in link from leading
    out. So are FIFOs, devices and folders: only regular files are served.
    """

    def __init__(self, folder: str) -> None:
        path = os.path.realpath(os.path.expanduser(folder))
        if not os.path.isdir(path):
            raise ValueError(f"file_dir {folder!r} is not a folder (resolved to {path})")
        self.path = path

    def _components(self, requested: str) -> list[str]:
        """The names to walk down from the root to requested (absolute, or relative to the root)."""
        if not requested or "\x00" in requested:
            raise LookupError("no file path given" if not requested else "the file path holds a NUL byte")
        full = os.path.normpath(os.path.join(self.path, requested))     # ".." taken lexically: no link is followed
        base: str | None = self.path
        if os.path.commonpath([full, self.path]) != self.path:
            base = self._alias(full)
            if base is None:
                raise LookupError(f"{requested} lies outside this server's file root {self.path}")
        return [name for name in os.path.relpath(full, base).split(os.sep) if name not in ("", ".")]

    def _alias(self, full: str) -> str | None:
        """The shortest ancestor of full that is the root under another name (links above the root, as in a
        file_dir given through a link), else None. Only where the walk starts: it still opens beneath the root."""
        ancestors = []
        while os.path.dirname(full) != full:
            full = os.path.dirname(full)
            ancestors.append(full)
        return next((a for a in reversed(ancestors) if os.path.realpath(a) == self.path), None)

    def open(self, requested: str) -> IO[bytes]:
        """requested, opened for reading; LookupError unless it is a regular file beneath the root, reached
        through no symbolic link."""
        names = self._components(requested)
        if not names:
            raise LookupError(f"{requested} is not a file under this server's file root {self.path}")
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise LookupError(f"this server's file root {self.path} cannot be opened ({exc.strerror})") from None
        try:
            for i, name in enumerate(names):
                last = i == len(names) - 1
                # O_NONBLOCK: a FIFO swapped in opens at once (and is refused below) instead of blocking
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
                try:
                    child = os.open(name, flags, dir_fd=fd)
                except OSError as exc:
                    raise self._refusal(requested, name, fd, exc) from None
                os.close(fd)
                fd = child
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LookupError(f"{requested} is not a file under this server's file root {self.path}")
            os.set_blocking(fd, True)
            handle = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        return handle

    def _refusal(self, requested: str, name: str, parent: int, exc: OSError) -> LookupError:
        """Why the component name of requested would not open beneath the folder open as parent."""
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            try:
                if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                    return LookupError(f"{requested} is or passes through a symbolic link ({name}): links are "
                                       f"not followed, nothing outside this server's file root {self.path} is "
                                       f"served")
            except OSError:
                pass
        return LookupError(f"{requested} is not a file under this server's file root {self.path}")

    @staticmethod
    def chunks(handle: IO[bytes]) -> Iterator[bytes]:
        """The file's bytes, CHUNK_BYTES at a time (on a worker thread: it reads the disk); closes it at the end."""
        with handle:
            while True:
                data = handle.read(CHUNK_BYTES)
                if not data:
                    return
                yield data

    @classmethod
    async def serve(cls, handle: IO[bytes], executor: concurrent.futures.Executor) -> AsyncIterator[pb.FileChunk]:
        """DownloadFile's chunks of the open file handle (closed at the end, or when the caller goes), read on
        executor's threads; the first carries the size (an empty file answers one empty chunk)."""
        loop = asyncio.get_running_loop()
        size = os.fstat(handle.fileno()).st_size
        chunks = cls.chunks(handle)
        first = True
        try:
            while True:
                data = await loop.run_in_executor(executor, next, chunks, None)
                if data is None:
                    if first:
                        yield pb.FileChunk(data=b"", size=0)
                    return
                yield pb.FileChunk(data=data, size=size if first else 0)
                first = False
        finally:
            handle.close()
