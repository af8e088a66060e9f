"""RpcObject: the local stand-in of an object that lives on an agent server."""
from __future__ import annotations

import logging
from typing import Any

from .. import _codec, _status, errors
from .._address import format_address, host_of
from .._class_cache import class_name
from .._config import check_options, check_py_modules
from .._client.slot import CallSlot, raised
from .._placeholder import AsyncResult, WaitPolicy
from .._reply_stream import ReplyStream
from .._runtime import Runtime, default_runtime
from ..relocation import AgentSpec, Binding, Relocation, choose, counted
from ..v1 import agent_server_pb2 as pb
from ..store import NameTakenError
from ._methods import CallMode, method_table
from ._named import bind_named, durable_options, forget_new, store_new
from .retry_strategy import RetryBase, retry_strategy_of
from .rpc_client import RpcClient
from .._ids import new_id

log = logging.getLogger("agentmesh.rpc")
#: what to_dist() takes (as keywords, or in its dict / DistConf)
TO_DIST_OPTIONS = frozenset({"host", "port", "labels", "registry", "namespace", "checkpoint", "max_timeout_seconds",
                             "retry_strategy", "agent_id", "py_modules", "name", "lifetime", "get_if_exists"})
#: AgentScope 0.1.6's to_dist() / DistConf options that set nothing here, accepted for ported code
AGENTSCOPE_TO_DIST_OPTIONS = frozenset({"max_pool_size", "max_expire_time", "local_mode", "lazy_launch"})


class _RemoteMethod:
    """A bound method of a proxy; calling it sends the call."""

    __slots__ = ("_proxy", "_name", "_mode")

    def __init__(self, proxy: "RpcObject", name: str, mode: CallMode) -> None:
        self._proxy = proxy
        self._name = name
        self._mode = mode

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._proxy._call(self._name, args, kwargs, self._mode)

    def aio(self, *args: Any, **kwargs: Any) -> AsyncResult | ReplyStream:
        """Call it asynchronously whatever its mode: ``await proxy.method.aio(...)`` from a coroutine."""
        mode = CallMode.STREAM if self._mode is CallMode.STREAM else CallMode.ASYNC
        return self._proxy._call(self._name, args, kwargs, mode)

    def __repr__(self) -> str:
        return f"<remote {self._mode.value} method {self._name} of {self._proxy!r}>"


class RpcObject:
    """Proxy of an agent on an agent server: public methods are forwarded to it.

    Asynchronous methods (``reply``, ``__call__`` and those marked
    ``@async_func``) return an ``AsyncResult`` at once; the others wait
    for their value. A proxy pickles to a proxy of the same agent.
    """

    def __init__(self, cls: type, oid: str | None = None, host: str | None = None, port: int | None = None,
                 connect_existing: bool = False, max_timeout_seconds: float | None = None,
                 retry_strategy: RetryBase | dict | None = None, configs: dict | None = None,
                 **options: Any) -> None:
        """AgentScope's constructor: a proxy of agent oid of class cls on host:port.

        connect_existing=True: the agent is already there (made by someone
        else, e.g. RpcClient.create_agent), so this proxy only calls it.
        Otherwise the agent is created from configs (``args``, ``kwargs``) —
        on host:port, or where placement puts it when no port is given.
        AgentScope-only options (``max_pool_size``, ``local_mode`` …) are accepted and unused.
        """
        retry = retry_strategy_of(retry_strategy)
        if connect_existing:
            if not oid or host is None or port in (None, ""):
                raise ValueError("RpcObject(connect_existing=True) needs the agent's oid, host and port")
            runtime = default_runtime()
            address = format_address(host, port)
            binding = Binding(runtime, agent_id=oid, cls_name=class_name(cls), address=address)
            self._setup(binding, method_table(cls), max_timeout_seconds, retry)
            return
        configs = configs or {}
        made = create_proxy(cls, tuple(configs.get("args", ())), dict(configs.get("kwargs", {})), host=host,
                            port=port, agent_id=oid, max_timeout_seconds=max_timeout_seconds,
                            retry_strategy=retry, **options)
        self._setup(made._binding, made._methods, made._timeout, made._retry)

    @classmethod
    def _bound(cls, binding: Binding, methods: dict[str, CallMode], timeout: float | None = None,
               retry: RetryBase | None = None) -> "RpcObject":
        """The proxy of binding's agent (how agentmesh itself makes proxies)."""
        proxy = cls.__new__(cls)
        proxy._setup(binding, methods, timeout, retry)
        return proxy

    def _setup(self, binding: Binding, methods: dict[str, CallMode], timeout: float | None,
               retry: RetryBase | None) -> None:
        self.agent_id = binding.agent_id
        self._binding = binding
        self._methods = methods
        self._timeout = timeout   # max_timeout_seconds: how long one wait for a result may last
        self._retry = retry       # retry_strategy: how often to wait again
        self._policy = WaitPolicy(timeout, retry) if timeout is not None or retry is not None else None

    @property
    def server(self) -> str:
        """Where the agent lives now, as "host:port"."""
        return self._binding.address

    @property
    def host(self) -> str:
        """The host of the agent's server now (AgentScope's ``host``)."""
        return host_of(self._binding.address)

    @property
    def port(self) -> int:
        """The port of the agent's server now (AgentScope's ``port``)."""
        return int(self._binding.address.rsplit(":", 1)[1])

    @property
    def client(self) -> "RpcClient":
        """An RpcClient of the agent's server now (AgentScope's ``client``)."""
        return RpcClient(self.host, self.port, self._binding.runtime)

    @property
    def _oid(self) -> str:
        """AgentScope's name for agent_id; setting it re-points this proxy at another agent of the same server."""
        return self.agent_id

    @_oid.setter
    def _oid(self, agent_id: str) -> None:
        if agent_id == self.agent_id:
            return
        b = self._binding
        self._setup(Binding(b.runtime, agent_id=agent_id, cls_name=b.cls_name, address=b.address,
                            server_id=b.server_id, epoch=b.epoch, name=b.name), self._methods, self._timeout,
                    self._retry)

    def _check_created(self) -> None:
        """Wait until the agent is built; AgentCreationError (or CapacityError) saying why it was not."""
        slot = self._binding.creation
        if slot is None:
            return
        reply = slot.wait(self._timeout)
        if reply.status != pb.OK:
            raise _status.reply_error(reply, self.agent_id, "__create__", self._binding.name)

    @property
    def name(self) -> str:
        """The agent's name (known locally, or as its constructor set it)."""
        binding = self._binding
        if not binding.name and binding.creation is not None:
            binding.creation.wait(self._timeout)
        return binding.name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        mode = self._methods.get(name)
        if mode is None:   # a public attribute: read its value from the server
            return self._call("__getattr__", (name,), {}, CallMode.SYNC)
        return _RemoteMethod(self, name, mode)   # not kept: a million proxies would hold a million of them

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self._call("__call__", args, kwargs, self._methods.get("__call__", CallMode.ASYNC))
        for agent in self._local_audience or ():   # a msghub's local participants see the pending reply
            agent.observe(result)
        return result

    def _call(self, method: str, args: tuple, kwargs: dict, mode: CallMode, notify: bool = False) -> Any:
        binding = self._binding
        conn = binding.session()
        try:
            payload = _codec.dumps_parts((args, kwargs)) if args or kwargs else ()
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises
            raise errors.PayloadError(
                f"arguments of {method}() for {errors.agent_label(self.agent_id, self._binding.name)} cannot be "
                f"pickled: "
                f"{type(exc).__name__}: {exc}", agent_id=self.agent_id, method=method) from exc
        slot = CallSlot(pb.Call(call_id=binding.runtime.next_call_id(), agent_id=self.agent_id, method=method,
                                epoch=binding.epoch, notify=notify), binding, payload=payload)
        if slot.size > conn.max_message_size:
            raise errors.MessageTooLargeError(
                f"arguments of {method}() are {slot.size} bytes, over the limit of "
                f"{conn.max_message_size} bytes (max_message_size)", agent_id=self.agent_id, method=method)
        tracing = binding.runtime.tracing
        if tracing is not None:
            slot.span = tracing.start_call(binding.cls_name, method, self.agent_id, binding.name, slot.call.trace)
        binding.send(slot, conn)
        if notify:   # told without waiting (_tell): its failure is logged once its reply is there
            binding.runtime.loop.spawn(_report_failure(self, method, slot))
        if mode is CallMode.STREAM:
            return ReplyStream(slot, method=method)
        result = AsyncResult(slot, policy=self._policy)
        if mode is CallMode.ASYNC:
            return result
        return result.result()

    def __reduce__(self):
        b = self._binding
        return (_rebuild_proxy, (b.cls_name, self.agent_id, b.address, b.server_id, b.epoch, self._methods, b.name,
                                 self._timeout, self._retry))

    def __repr__(self) -> str:
        return f"<RpcObject {self._binding.cls_name} {self._binding.name or self.agent_id} on {self.server}>"

    # -- msghub: fire-and-forget calls, a local audience, identity by agent_id ---------------
    #: local (in-process) agents that observe each reply of __call__; a msghub sets and clears it
    _local_audience: list | None = None

    def _tell(self, method: str, args: tuple = (), kwargs: dict | None = None) -> None:
        """Send a call and do not wait for it (a msghub's broadcast): a failure is logged, never raised.

        The call goes like an asynchronous one, in order with the agent's other
        calls, except that it may run ahead of calls still waiting on the
        server for their arguments (it was sent before any of those could
        start); a pending placeholder among the arguments is fetched by the
        agent's server, not here.
        """
        try:
            self._call(method, tuple(args), dict(kwargs or {}), CallMode.ASYNC, notify=True)
        except Exception as exc:  # noqa: BLE001 - a broadcast must not break the reply that makes it
            _told_badly(self, method, exc)

    def __eq__(self, other: object) -> bool:
        """The same agent: another proxy of it, or the agent itself (an object of a distributable class)."""
        if isinstance(other, RpcObject):
            return self.agent_id == other.agent_id
        try:
            other_id = vars(other).get("agent_id")   # vars: no attribute lookup that could block or call out
        except TypeError:
            return NotImplemented
        if isinstance(other_id, str) and other_id and hasattr(type(other), "to_dist"):
            return self.agent_id == other_id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.agent_id)


def _rebuild_proxy(cls_name: str, agent_id: str, address: str, server_id: str, epoch: int,
                   methods: dict[str, CallMode], name: str, timeout: float | None = None,
                   retry: RetryBase | None = None) -> RpcObject:
    binding = Binding(default_runtime(), agent_id=agent_id, cls_name=cls_name, address=address,
                      server_id=server_id, epoch=epoch, name=name)
    return RpcObject._bound(binding, methods, timeout, retry)


def _name_from(args: tuple, kwargs: dict) -> str:
    """The name an agent will have, when its constructor follows AgentBase(name, ...)."""
    name = kwargs.get("name", args[0] if args else "")
    return name if isinstance(name, str) else ""


def create_proxy(cls: type, args: tuple, kwargs: dict, host: str | None = None,
                 port: int | str | None = None, runtime: Runtime | None = None, **options: Any) -> RpcObject:
    """Return the proxy of a new object of cls on an agent server, at once.

    host/port: that server. Otherwise (no port, as in AgentScope's DistConf()) the registry's choice (options such as
    ``labels`` constrain it), else a child server of this process. The
    creation travels ahead of the first calls on the same session, so this
    does not wait for the constructor; if it fails, the first use raises
    AgentCreationError. An unknown option is a TypeError naming it: nothing is placed.
    ``py_modules``: modules whose code the class uses, shipped with it (with init()'s).
    """
    check_options(options, TO_DIST_OPTIONS, AGENTSCOPE_TO_DIST_OPTIONS, f"{cls.__name__}.to_dist()")
    runtime = runtime or default_runtime()
    modules = runtime.settings.py_modules + check_py_modules(options.get("py_modules"), f"{cls.__name__}.to_dist()")
    if modules:   # their code goes with the class, by value: the server needs none of them
        runtime.classes.ship_with(cls, modules)
    timeout = options.get("max_timeout_seconds")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"max_timeout_seconds must be a positive number of seconds, not {timeout!r}")
    retry = retry_strategy_of(options.get("retry_strategy"))
    agent_id = options.pop("agent_id", None) or new_id()
    name, lifetime, get_if_exists = durable_options(cls, options)
    try:
        init_blob = _codec.dumps_plain_first((args, kwargs))
    except Exception as exc:  # noqa: BLE001
        raise errors.AgentCreationError(
            f"constructor arguments of {cls.__name__} cannot be pickled: {type(exc).__name__}: {exc}") from exc
    if options.get("durable"):
        try:
            store_new(runtime, cls, agent_id, init_blob, options, name, lifetime)
        except NameTakenError:
            if not get_if_exists:
                raise
            return get_agent(name, options.get("namespace"), runtime)  # type: ignore[arg-type]
    try:
        if host is not None and port not in (None, "", -1, "-1"):
            conn, relocatable = runtime.pool.connect(format_address(host, port)), False
            counted(runtime, "explicit")
        else:
            conn, relocatable = choose(runtime, cls, options), True
    except BaseException:
        if options.get("durable"):    # nothing was placed: its row goes, so its name is free again
            forget_new(runtime, agent_id)
        raise
    binding = Binding(runtime, agent_id=agent_id, cls_name=class_name(cls), address=conn.address,
                      server_id=conn.server_id, name=_name_from(args, kwargs),
                      spec=AgentSpec(cls, agent_id, init_blob, options), relocatable=relocatable)
    binding.bind(conn)
    if lifetime == "owned":    # a detached agent outlives this process: it is not deleted when the runtime closes
        Relocation.of(runtime).owned[agent_id] = conn.address
    binding.start_creation(conn)
    return RpcObject._bound(binding, method_table(cls), timeout, retry)


def get_agent(name: str, namespace: str | None = None, runtime: Runtime | None = None, **to_dist: Any) -> RpcObject:
    """A proxy of the durable agent called name, from any process with the same state store (see _named)."""
    binding, cls = bind_named(name, namespace, runtime or default_runtime(), to_dist)
    return RpcObject._bound(binding, method_table(cls), to_dist.get("max_timeout_seconds"),
                            retry_strategy_of(to_dist.get("retry_strategy")))


# -- what msghub and an agent's audience use of a proxy: functions, so that a proxy's public names stay its agent's
def tell(proxy: RpcObject, method: str, args: tuple = (), kwargs: dict | None = None) -> None:
    """Send proxy's agent a call of method and do not wait for it: a failure is logged, never raised (see _tell)."""
    proxy._tell(method, args, kwargs)


def set_local_audience(proxy: RpcObject, agents: list | None) -> None:
    """The agents of this process that observe each reply of proxy's ``__call__``, pending (None: nobody); a msghub
    sets them, as a server cannot reach them."""
    proxy._local_audience = agents


async def _report_failure(proxy: RpcObject, method: str, slot: CallSlot) -> None:
    """Log the failure of a call sent by _tell once its reply is there (I/O loop)."""
    await slot.wait_async()
    error = raised(slot.value())
    if error is not None:
        _told_badly(proxy, method, error)


def _told_badly(proxy: RpcObject, method: str, error: BaseException) -> None:
    first = str(error.args[0]) if error.args else type(error).__name__
    log.warning("%s() on agent %s (%s, on %s), sent without waiting (a msghub broadcast), failed: %s: %s",
                method, proxy._binding.name or "?", proxy.agent_id, proxy.server, type(error).__name__, first)
