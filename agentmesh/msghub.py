"""msghub: agents that see each other's replies (AgentScope's msghub, for local agents and proxies alike).

Inside ``with msghub(participants):`` every reply a participant gives through
``__call__`` is observed by the others. A proxy's reply goes from its server
straight to the other proxies' servers (told without waiting, so an agent never
blocks on another's mailbox); local participants observe it as the pending
placeholder the call returns, and tell the proxies their own replies.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from .agents import AgentBase
from .rpc import RpcObject, set_local_audience

log = logging.getLogger("agentmesh")


class MsgHubManager:
    """A group of agents sharing their replies; ``add``/``delete`` change the group while it is open."""

    def __init__(self, participants: Sequence[Any], announcement: Any = None) -> None:
        self.participants: list[Any] = list(participants)   # the caller's list is left as it was
        self.announcement = announcement

    def __enter__(self) -> "MsgHubManager":
        if log.isEnabledFor(logging.DEBUG):
            log.debug("enter msghub with participants: %s", ", ".join(str(_name(a)) for a in self.participants))
        self._reset_audience()
        if self.announcement is not None:
            self.broadcast(self.announcement)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _clear(self.participants)

    def _reset_audience(self) -> None:
        """Each participant's audience becomes the others: all of them for a local agent, the proxies for a remote one.

        A server cannot reach an agent of this process, so a proxy hands its
        pending replies to the local participants itself (``set_local_audience``).
        """
        proxies = [a for a in self.participants if isinstance(a, RpcObject)]
        local = [a for a in self.participants if not isinstance(a, RpcObject)]
        pending = []
        for agent in self.participants:
            if isinstance(agent, RpcObject):
                set_local_audience(agent, local or None)
                pending.append(agent.reset_audience.aio(proxies))   # its server leaves itself out
            else:
                agent.reset_audience(self.participants)
        for result in pending:   # sent to every server at once, then waited for
            result.result()

    def add(self, new_participant: Any) -> None:
        """Add an agent, or each of a list, to the hub (a WARNING for one already in it)."""
        for agent in _agents(new_participant):
            if agent in self.participants:
                log.warning("msghub: skip adding agent %s: it has already joined", _name(agent))
            else:
                self.participants.append(agent)
        self._reset_audience()

    def delete(self, participant: Any) -> None:
        """Take an agent, or each of a list, out of the hub (a WARNING for one not in it)."""
        for agent in _agents(participant):
            if agent in self.participants:
                _clear([agent])
                self.participants.pop(self.participants.index(agent))
            else:
                log.warning("msghub: cannot find agent %s, skip its deletion", _name(agent))
        self._reset_audience()

    def broadcast(self, msg: Any) -> None:
        """Every participant observes msg (one message or a list), the proxies' servers all at once."""
        pending = []
        for agent in self.participants:
            if isinstance(agent, RpcObject):
                pending.append(agent.observe.aio(msg))
            else:
                agent.observe(msg)
        for result in pending:
            result.result()


def msghub(participants: Sequence[Any], announcement: Any = None) -> MsgHubManager:
    """A hub in which each participant's replies are observed by the others (use it in a ``with``).

    ``announcement`` (a message or a list of them) is observed by every
    participant on entering. Inside the hub,

        with msghub([a, b, c], announcement=Msg("host", "debate!")):
            x = a(); x = b(x); x = c(x)

    b and c observe a's reply, a and c b's, a and b c's; leaving the hub ends it.
    """
    return MsgHubManager(participants, announcement)


def _agents(value: Any) -> list[Any]:
    if isinstance(value, (AgentBase, RpcObject)) or not isinstance(value, (list, tuple, set)):
        return [value]
    return list(value)


def _clear(agents: list[Any]) -> None:
    pending = []
    for agent in agents:
        if isinstance(agent, RpcObject):
            set_local_audience(agent, None)
            pending.append(agent.clear_audience.aio())
        else:
            agent.clear_audience()
    for result in pending:
        result.result()


def _name(agent: Any) -> Any:
    return getattr(agent, "name", agent)
