"""Agents for the benchmarks (importable by the servers: they inherit sys.path)."""
from agentmesh import AgentBase
from agentmesh.rpc import async_func


class Noop(AgentBase):
    def ping(self, x=None):
        return x

    @async_func
    def aping(self, x=None):
        return x
