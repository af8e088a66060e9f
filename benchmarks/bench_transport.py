"""The floor under the synchronous call: bare gRPC ping-pong designs, with no agentmesh code at all.

    python benchmarks/bench_transport.py [--n 3000] [--repeat 3]

gRPC runs with the core settings agentmesh applies (agentmesh._grpc_tuning).
Each design is a server process and a client in this process, exchanging one
40-byte message at a time on one bidirectional stream (as agentmesh's Session
does), 3,000 round trips after 300 warm-up ones; the median round trip is
printed per design, one Markdown row each. Servers:

- aio: grpc.aio, the reply written on the event loop that read the call;
- aio+worker: grpc.aio, the call run on a worker thread first (run_in_executor),
  as an agent's method is, so the loop keeps serving others;
- sync: grpc's thread-per-stream server, the handler answers inline;
- sync+reader: a reader thread takes each call and queues the reply for the
  handler's generator (no worker);
- sync+reader+worker: the same, the call run on a worker thread in between.

Clients: sync (the caller's thread writes through a request iterator and reads
its own reply) and aio (the caller hands the call to an asyncio loop thread and
waits on a lock, as agentmesh's client does). Every server process is stopped
by PID.
"""
from __future__ import annotations

import argparse
import asyncio
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures

import agentmesh  # noqa: F401 - only for the gRPC core settings agentmesh applies (_grpc_tuning)
import grpc

SERVICE, METHOD = "bench.Transport", "Session"
#: with --options: agentmesh's channel and server options (keepalive, limits, sizes)
OPTIONS = {"on": False}


def _server_options() -> list:
    from agentmesh import _protocol
    return _protocol.server_options(64 * 2**20) if OPTIONS["on"] else []


def _channel_options() -> list:
    from agentmesh import _protocol
    return _protocol.channel_options(64 * 2**20) if OPTIONS["on"] else []
PAYLOAD = b"x" * 40


def _same(data: bytes) -> bytes:
    return data


def _handler(behaviour) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.stream_stream_rpc_method_handler(behaviour, _same, _same)})


def _serve_threads(behaviour, port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(8), options=_server_options())
    server.add_generic_rpc_handlers((_handler(behaviour),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_sync(port: int) -> None:
    def echo(requests, context):
        for request in requests:
            yield request
    _serve_threads(echo, port)


def _serve_reader(port: int, worker: bool) -> None:
    pool = futures.ThreadPoolExecutor(1)

    def echo(requests, context):
        replies: queue.SimpleQueue = queue.SimpleQueue()

        def read() -> None:
            try:
                for request in requests:
                    if worker:
                        pool.submit(replies.put, request)
                    else:
                        replies.put(request)
            except grpc.RpcError:   # the client went away
                pass
            replies.put(None)
        threading.Thread(target=read, daemon=True).start()
        while (reply := replies.get()) is not None:
            yield reply
    _serve_threads(echo, port)


async def _serve_aio(behaviour, port: int) -> None:
    server = grpc.aio.server(options=_server_options())
    server.add_generic_rpc_handlers((_handler(behaviour),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_aio(port: int, worker: bool = False) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = futures.ThreadPoolExecutor(1)

        async def echo(requests, context):
            async for request in requests:
                if worker:
                    request = await loop.run_in_executor(pool, _same, request)
                await context.write(request)
        await _serve_aio(echo, port)
    asyncio.run(main())


def serve_aio_tasks(port: int) -> None:
    """As agentmesh's server: a task reads calls and hands them to a worker thread, which hands the reply
    back to the loop (call_soon_threadsafe); another task writes replies."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = futures.ThreadPoolExecutor(1)

        async def echo(requests, context):
            replies: asyncio.Queue = asyncio.Queue()

            def work(request: bytes) -> None:
                loop.call_soon_threadsafe(replies.put_nowait, request)

            async def read() -> None:
                async for request in requests:
                    pool.submit(work, request)
            reader = asyncio.ensure_future(read())
            try:
                while True:
                    await context.write(await replies.get())
            finally:
                reader.cancel()
        await _serve_aio(echo, port)
    asyncio.run(main())


SERVERS = {
    "aio+worker+tasks": serve_aio_tasks,
    "aio": serve_aio,
    "aio+worker": lambda port: serve_aio(port, worker=True),
    "sync": serve_sync,
    "sync+reader": lambda port: _serve_reader(port, worker=False),
    "sync+reader+worker": lambda port: _serve_reader(port, worker=True),
}


def client_sync(port: int, n: int) -> list[int]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=_channel_options())
    outgoing: queue.SimpleQueue = queue.SimpleQueue()

    def requests():
        while (item := outgoing.get()) is not None:
            yield item
    replies = channel.stream_stream(f"/{SERVICE}/{METHOD}", request_serializer=_same,
                                    response_deserializer=_same)(requests())
    times = []
    for _ in range(n + 300):
        t = time.perf_counter_ns()
        outgoing.put(PAYLOAD)
        next(replies)
        times.append(time.perf_counter_ns() - t)
    outgoing.put(None)
    channel.close()
    return times[300:]


def client_aio(port: int, n: int) -> list[int]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def open_stream():
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_channel_options())
        return channel, channel.stream_stream(f"/{SERVICE}/{METHOD}", request_serializer=_same,
                                              response_deserializer=_same)()
    channel, stream = asyncio.run_coroutine_threadsafe(open_stream(), loop).result()

    async def one(done: threading.Lock) -> None:
        await stream.write(PAYLOAD)
        await stream.read()
        done.release()
    times = []
    for _ in range(n + 300):
        t = time.perf_counter_ns()
        done = threading.Lock()
        done.acquire()
        loop.call_soon_threadsafe(lambda d=done: asyncio.ensure_future(one(d)))
        done.acquire()
        times.append(time.perf_counter_ns() - t)
    asyncio.run_coroutine_threadsafe(channel.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    return times[300:]


def client_aio_tasks(port: int, n: int) -> list[int]:
    """As agentmesh's client: the caller queues the call for a writer task (call_soon_threadsafe) and waits
    on a lock that a reader task releases."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    outgoing: asyncio.Queue = asyncio.Queue()
    waiting: list[threading.Lock] = []

    async def open_stream():
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_channel_options())
        stream = channel.stream_stream(f"/{SERVICE}/{METHOD}", request_serializer=_same,
                                       response_deserializer=_same)()

        async def write() -> None:
            while True:
                await stream.write(await outgoing.get())

        async def read() -> None:
            while True:
                await stream.read()
                waiting.pop(0).release()
        return channel, [asyncio.ensure_future(write()), asyncio.ensure_future(read())]
    channel, tasks = asyncio.run_coroutine_threadsafe(open_stream(), loop).result()
    times = []
    for _ in range(n + 300):
        t = time.perf_counter_ns()
        done = threading.Lock()
        done.acquire()
        waiting.append(done)
        loop.call_soon_threadsafe(outgoing.put_nowait, PAYLOAD)
        done.acquire()
        times.append(time.perf_counter_ns() - t)
    for task in tasks:
        loop.call_soon_threadsafe(task.cancel)
    asyncio.run_coroutine_threadsafe(channel.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    return times[300:]


CLIENTS = {"sync": client_sync, "aio": client_aio, "aio+tasks": client_aio_tasks}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"server on port {port} did not start")


def measure(server: str, client: str, n: int) -> float:
    """Median round trip (µs) of one design, its server in a fresh process."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", server, "--port", str(port)]
                            + (["--options"] if OPTIONS["on"] else []))
    try:
        _ready(port)
        return statistics.median(CLIENTS[client](port, n)) / 1e3
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per design (the median is printed)")
    parser.add_argument("--options", action="store_true", help="agentmesh's gRPC channel and server options")
    parser.add_argument("--only", default="", help="comma-separated server designs")
    parser.add_argument("--serve", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    OPTIONS["on"] = args.options
    if args.serve:
        SERVERS[args.serve](args.port)
        return
    print("| server | client | median round trip (µs) |\n|---|---|---|")
    for server in (args.only.split(",") if args.only else SERVERS):
        for client in CLIENTS:
            runs = [measure(server, client, args.n) for _ in range(args.repeat)]
            print(f"| {server} | {client} | {statistics.median(runs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
