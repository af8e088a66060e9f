"""AgentScope's distribution tutorial, on agentmesh (examples/distribution)."""
import os
import sys
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples", "distribution"))
import dist_main  # noqa: E402


def _run(agents, capsys):
    elapsed = dist_main.run(agents)
    out = capsys.readouterr().out.split()
    return elapsed, out


def test_child_mode_five_agents_in_parallel(capsys):
    start = time.time()
    agents = dist_main.init_with_dist()
    init = time.time() - start
    elapsed, out = _run(agents, capsys)
    assert sorted(w for w in out if w.startswith("W")) == [f"W{i}" for i in range(5)]
    # five 5-second agents in parallel take the time of one, not 25 s
    assert 5.0 <= elapsed < 10.0, elapsed
    print(f"child-mode init {init:.3f}s, runtime {elapsed:.3f}s", file=sys.stderr)


def test_independent_mode_dict_form(server, capsys):
    host, port = "localhost", server.port
    agents = [dist_main.WebAgent(f"W{i}", to_dist={"host": host, "port": str(port)})
              for i in range(len(dist_main.URLS))]
    assert {a.server for a in agents} == {f"localhost:{port}"}
    elapsed, out = _run(agents, capsys)
    assert sorted(w for w in out if w.startswith("W")) == [f"W{i}" for i in range(5)]
    assert 5.0 <= elapsed < 10.0, elapsed
