"""The agent model: AgentBase and agent memory."""
from ._agent import AgentBase
from ._memory import TemporaryMemory

__all__ = ["AgentBase", "TemporaryMemory"]
