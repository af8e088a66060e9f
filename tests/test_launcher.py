"""RpcAgentServerLauncher and `agentmesh server`: start, serve, stop."""
import re
import signal
import subprocess
import time

import pytest

import agentmesh

from agentmesh import Msg, RpcAgentServerLauncher
from conftest import PYTHON, pid_alive, server_info, wait_until
from sample_agents import Echo


def test_in_process_launch_serves_and_shuts_down():
    before = signal.getsignal(signal.SIGTERM)
    launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=4, custom_agent_classes=[Echo])
    launcher.launch(in_subprocess=False)
    try:
        assert launcher.port
        assert signal.getsignal(signal.SIGTERM) is not before     # SIGTERM drains the server while it runs
        agent = Echo("E").to_dist(host="127.0.0.1", port=launcher.port)
        assert agent.reply(Msg("u", 1)).content["count"] == 1
    finally:
        launcher.shutdown()
    launcher.wait_until_terminate()  # returns at once: the server has stopped
    assert signal.getsignal(signal.SIGTERM) is before            # and is given back once it has stopped
    # A deliberate shutdown without a registry: the agent ended with its server, and says so.
    with pytest.raises(agentmesh.errors.ServerUnavailableError,
                       match=f"ended with agent server 127.0.0.1:{launcher.port}, which was shut down"):
        agent.get_count()


@pytest.mark.parametrize("in_subprocess", [False, True])
def test_an_idle_server_stops_in_under_a_second(in_subprocess):
    launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=4)
    launcher.launch(in_subprocess=in_subprocess)
    try:
        assert server_info(launcher).agents == 0
        start = time.monotonic()
        launcher.shutdown()
        took = time.monotonic() - start
        if in_subprocess:
            assert not pid_alive(launcher.pid)
            assert launcher._process.proc.returncode == 0
        assert took < 1.0, f"an idle server took {took:.2f} s to stop"
    finally:
        if in_subprocess and pid_alive(launcher.pid):
            launcher._process.kill()


def test_shutdown_lets_running_calls_finish():
    launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=4)
    launcher.launch(in_subprocess=True)
    try:
        agent = Echo("E").to_dist(host="127.0.0.1", port=launcher.port)
        pending = agent.slow(1.0, "done")
        wait_until(lambda: server_info(launcher).inflight == 1)
        launcher.shutdown()
        assert pending.result(timeout=5) == "done"
    finally:
        if pid_alive(launcher.pid):
            launcher._process.kill()


def _start_cli(procs, *args):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", *args],
                 stderr=subprocess.PIPE, text=True)
    line = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        if match:
            return proc, int(match.group(2))
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"agentmesh server did not start: {line!r}, code {proc.poll()}")


def test_cli_server_with_agent_class_and_sigterm(procs):
    proc, port = _start_cli(procs, "--port", "0", "--capacity", "3", "--agent-class", "sample_agents:Echo")
    agent = Echo("E").to_dist(host="127.0.0.1", port=port)
    assert agent.reply(Msg("u", "x")).content == {"count": 1, "got": "x"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_cli_refuses_a_port_in_use(procs):
    first, port = _start_cli(procs, "--port", "0")
    second = procs([PYTHON, "-m", "agentmesh.cli", "server", "--port", str(port)],
                   stderr=subprocess.PIPE, text=True)
    _, err = second.communicate(timeout=20)
    assert second.returncode != 0
    assert f"{port}" in err and "in use" in err
    assert first.poll() is None


def test_cli_refuses_network_address_without_token(procs):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", "--host", "0.0.0.0", "--port", "0"],
                 stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0 without a token" in err


def test_cli_bad_agent_class(procs):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", "--agent-class", "no_such_module:X"],
                 stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "no_such_module" in err


def test_a_channel_in_reconnect_backoff_elsewhere_in_the_process_does_not_fail_a_new_dial(servers):
    """Another channel of this process keeps dialling a port where nothing listens (in reconnect backoff, as a
    dead server's channel is until it is closed); a server then starts on that port: a proxy to it must work at
    once. gRPC shares subchannels between channels of the same address and options, so the new dial failed
    with the old "Connection refused" (one suite run in nine, when the kernel handed out a port again)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agentmesh import _protocol
    from agentmesh._runtime import default_runtime
    from agentmesh.testing.etcd import free_port

    runtime = default_runtime()
    port = free_port()

    async def dial_nothing() -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                            options=_protocol.channel_options(runtime.settings.max_message_size))
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        return channel

    stale = runtime.run(dial_nothing())
    try:
        server = servers(capacity=4, port=port)
        agent = Echo("E").to_dist(host="127.0.0.1", port=server.port)
        assert agent.reply(Msg("u", 1)).content["count"] == 1
    finally:
        runtime.run(stale.close())
