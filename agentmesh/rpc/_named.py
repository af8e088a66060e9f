"""Named and detached agents (durable): their rows in the state store, get_agent and delete_agent.

A durable agent (``to_dist(name=...)`` or ``lifetime="detached"``) has a row
in the state store that its creator makes (id, name, class, lifetime, its
constructor arguments); the server that hosts it activates the row and
commits the agent's state there after each call. Any process of the namespace
with the same store finds it by name: where the registry says it lives, else
it is activated again (from its last committed state) where placement puts it.
An owned agent's row goes when its creator's runtime closes; a detached one
stays until ``delete_agent``.
"""
from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from .. import errors
from .._checkpoint import Checkpoint
from .._class_cache import class_name
from .._runtime import Runtime, default_runtime
from ..relocation import AgentSpec, Binding, Relocation, choose
from ..store import LIFETIMES, StateStore, open_store, redact_store_url
from ._methods import method_table

log = logging.getLogger("agentmesh.rpc")


class NamedAgents:
    """One runtime's state store (opened on first use) and the owned durable agents it made (deleted at close)."""

    NAME = "named"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._store: StateStore | None = None
        self._url = ""
        self._lock = threading.Lock()
        self.owned: set[str] = set()

    @classmethod
    def of(cls, runtime: Runtime) -> "NamedAgents":
        state = runtime.extensions.get(cls.NAME)
        if state is None:
            state = runtime.extensions.setdefault(cls.NAME, cls(runtime))
        return state

    def store(self, what: str) -> StateStore:
        """The runtime's state store; what (e.g. "to_dist(name=...)") names the use in the error when none is set."""
        url = self.runtime.settings.state_store
        if not url:
            raise errors.AgentCreationError(
                f"{what} needs a state store: agentmesh.init(state_store='sqlite:///path/state.db' or "
                f"'postgresql://user@host/db'), or AGENTMESH_STATE_STORE")
        with self._lock:
            if self._store is None or self._url != url:
                if self._store is not None:
                    self._store.close()
                self._store, self._url = open_store(url), url
            return self._store

    async def close(self) -> None:
        """The runtime is closing: the rows of the owned durable agents it made go (their agents end with it)."""
        owned, self.owned = self.owned, set()
        store, self._store = self._store, None
        if store is None:
            return
        for agent_id in owned:
            try:
                store.delete(agent_id)
            except Exception as exc:  # noqa: BLE001 - the rest still go
                log.info("could not delete the stored state of owned agent %s: %s", agent_id, exc)
        store.close()


def durable_options(cls: type, options: dict[str, Any]) -> tuple[str | None, str, bool]:
    """Pop (name, lifetime, get_if_exists) from to_dist()'s options, checked; a durable agent's options get
    ``durable``."""
    name = options.pop("name", None)
    lifetime = options.pop("lifetime", None)
    get_if_exists = options.pop("get_if_exists", False)
    what = f"{cls.__name__}.to_dist()"
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"{what}: name must be a non-empty string, not {name!r}")
    if lifetime is not None and lifetime not in LIFETIMES:
        raise ValueError(f"{what}: lifetime must be one of {', '.join(repr(x) for x in LIFETIMES)}, not {lifetime!r}")
    if get_if_exists and name is None:
        raise ValueError(f"{what}: get_if_exists=True needs a name")
    if name is not None or lifetime == "detached":
        options["durable"] = True
    return name, lifetime or "owned", bool(get_if_exists)


def store_new(runtime: Runtime, cls: type, agent_id: str, init_blob: bytes, options: dict[str, Any],
              name: str | None, lifetime: str) -> None:
    """Make the durable agent's row (before it is placed); NameTakenError when the name lives."""
    named = NamedAgents.of(runtime)
    store = named.store(f"{cls.__name__}.to_dist(name=..., lifetime=...)")
    namespace = options.get("namespace") or runtime.settings.namespace
    store.create(agent_id, namespace, name, class_name(cls), lifetime, init_args=init_blob)
    if lifetime == "owned":
        named.owned.add(agent_id)


def forget_new(runtime: Runtime, agent_id: str) -> None:
    """Undo store_new: the agent could not be placed (best effort; a store error is logged)."""
    named = NamedAgents.of(runtime)
    named.owned.discard(agent_id)
    try:
        named.store("to_dist()").delete(agent_id)
    except Exception as exc:  # noqa: BLE001 - the placement's error is the one to raise
        log.info("could not remove the row of agent %s, which could not be placed: %s", agent_id, exc)


def _import_class(qualified: str) -> type:
    module, _, qualname = qualified.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001
        raise errors.ClassNotFoundError(f"class {qualified} of the stored agent cannot be imported in this process "
                                        f"({type(exc).__name__}: {exc}); its module must be importable here") from None
    return obj


def bind_named(name: str, namespace: str | None, runtime: Runtime, to_dist: dict[str, Any]) -> tuple[Binding, type]:
    """The binding (and class) of the durable agent called name in the namespace (this process's by default):
    where the registry says it lives, else activated again from its last committed state where placement puts
    it. UnknownAgentError when no agent has that name."""
    store = NamedAgents.of(runtime).store("agentmesh.get_agent()")
    namespace = namespace or runtime.settings.namespace
    row = store.by_name(namespace, name)
    if row is None:
        raise errors.UnknownAgentError(f"no agent named {name!r} in namespace {namespace!r} (state store "
                                       f"{redact_store_url(store.url)})")
    cls = _import_class(row.cls)
    options = dict(to_dist, durable=True)
    if namespace != runtime.settings.namespace:
        options["namespace"] = namespace
    spec = AgentSpec(cls, row.agent_id, row.init_args, options, Checkpoint())
    conn = None
    if runtime.settings.registry and namespace == runtime.settings.namespace:
        located = runtime.run(runtime.locate(row.agent_id, timeout=0.0))
        if located is not None:
            try:
                conn = runtime.pool.connect(located[1], expect=located[0])
            except (errors.AgentMeshError, OSError, TimeoutError) as exc:   # its server died; its record lingers
                log.info("agent %r: its registry record names %s, which does not answer (%s); activating it again",
                         name, located[1], exc)
    found = conn is not None
    if conn is None:
        conn = choose(runtime, cls, options)
    binding = Binding(runtime, agent_id=row.agent_id, cls_name=row.cls, address=conn.address,
                      server_id=conn.server_id, name=name, spec=spec, relocatable=True)
    binding.bind(conn)
    if not found:
        binding.start_creation(conn)   # activated from the store, ahead of the first call on the session
    return binding, cls


def delete_agent(name: str, namespace: str | None = None, runtime: Runtime | None = None) -> bool:
    """End the durable agent called name and remove its state (its name is free again); whether it existed."""
    runtime = runtime or default_runtime()
    store = NamedAgents.of(runtime).store("agentmesh.delete_agent()")
    namespace = namespace or runtime.settings.namespace
    row = store.by_name(namespace, name)
    if row is None:
        return False
    deleted = store.delete(row.agent_id)     # first: a copy still running can commit nothing more
    if runtime.settings.registry and namespace == runtime.settings.namespace:
        located = runtime.run(runtime.locate(row.agent_id, timeout=0.0))
        if located is not None:
            runtime.run(runtime.pool.delete_agents({row.agent_id: located[1]}))
    Relocation.of(runtime).owned.pop(row.agent_id, None)
    NamedAgents.of(runtime).owned.discard(row.agent_id)
    return deleted

