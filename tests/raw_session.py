"""A hand-driven Session stream over raw gRPC, for tests that send what no proxy would."""
from __future__ import annotations

import collections
import queue
import threading
from typing import Any

import grpc

from agentmesh.v1 import agent_server_pb2 as pb

SESSION_METHOD = "/agentmesh.v1.AgentServer/Session"


class RawSession:
    """Frames go in through a queue; a thread collects what comes back.

    raw=True sends frames as given (bytes), so malformed ones reach the server.
    """

    def __init__(self, channel: grpc.Channel, md: Any, raw: bool = False, timeout: float = 600) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self.frames: list[pb.ServerFrame] = []
        self.replies: dict[str, pb.Reply] = {}          # the last reply to each call id
        self.all_replies: list[pb.Reply] = []
        self.received: collections.Counter[str] = collections.Counter()
        self.error: grpc.RpcError | None = None
        self.ended = False
        call = channel.stream_stream(SESSION_METHOD,
                                     request_serializer=None if raw else pb.ClientFrame.SerializeToString,
                                     response_deserializer=pb.ServerFrame.FromString)
        self.rpc = call(self._outgoing(), metadata=md, timeout=timeout)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _outgoing(self):
        while True:
            frame = self._requests.get()
            if frame is None:
                return
            yield frame

    def _read(self) -> None:
        try:
            for frame in self.rpc:
                with self._cond:
                    self.frames.append(frame)
                    for reply in frame.replies:
                        self.replies[reply.call_id] = reply
                        self.all_replies.append(reply)
                        self.received[reply.call_id] += 1
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def send(self, *calls: pb.Call) -> None:
        """One frame carrying these calls."""
        self._requests.put(pb.ClientFrame(calls=list(calls)))

    def send_frame(self, frame: Any) -> None:
        """A frame as it is (a ClientFrame, or bytes on a raw session)."""
        self._requests.put(frame)

    def finish(self) -> None:
        """Half-close: the server ends the session once it has answered."""
        self._requests.put(None)

    def hello(self, timeout: float = 10.0) -> pb.Hello:
        with self._cond:
            assert self._cond.wait_for(lambda: self.frames or self.ended, timeout), "no Hello"
        assert self.frames, f"session ended without a Hello: {self.error}"
        assert self.frames[0].HasField("hello")
        return self.frames[0].hello

    def reply(self, call_id: str, timeout: float = 10.0) -> pb.Reply:
        with self._cond:
            self._cond.wait_for(lambda: call_id in self.replies or self.ended, timeout)
            if call_id not in self.replies:
                raise AssertionError(f"no reply to {call_id} within {timeout} s (ended={self.ended}, "
                                     f"error={self.error})")
            return self.replies[call_id]

    def wait_for(self, wanted: collections.Counter, timeout: float = 20.0) -> bool:
        """Wait until every call id got its replies; False if the stream ended first."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self.ended or all(self.received[k] >= n for k, n in wanted.items()), timeout)
            assert ok, f"no reply within {timeout} s to {len(wanted)} call(s): the server hangs"
            return all(self.received[k] >= n for k, n in wanted.items())

    def wait_end(self, timeout: float = 20.0) -> grpc.RpcError | None:
        """Wait for the stream to end; the error it ended with, if any."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.ended, timeout), "the session did not end"
        return self.error

    def end_code(self, timeout: float = 20.0) -> grpc.StatusCode:
        error = self.wait_end(timeout)
        return error.code() if error is not None else grpc.StatusCode.OK

    def close(self) -> None:
        self._requests.put(None)
        self.rpc.cancel()
        self._reader.join(5)
