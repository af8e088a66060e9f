"""Prometheus service discovery from the registry: a file_sd target file of the servers' metrics endpoints.

Servers started with a metrics port put its address in their (signed)
registry record. ``agentmesh prometheus-targets --output FILE`` writes, from
the records it can verify, the target list Prometheus's ``file_sd_configs``
reads; with ``--watch`` it follows the registry and rewrites the file when
servers come and go (Prometheus notices the change by itself). The file is
replaced atomically, so Prometheus never reads half of it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from typing import Any, Iterable

from ._view import ServerView
from .records import ServerRecord

log = logging.getLogger("agentmesh.discovery")


def targets_of(records: Iterable[ServerRecord], namespace: str) -> list[dict[str, Any]]:
    """file_sd entries: one per server that serves metrics, labelled with its id, namespace and labels (a label
    ``k`` as ``label_k``: records carry only keys that are Prometheus label names, so no two collide)."""
    out = []
    for record in sorted(records, key=lambda r: r.server_id):
        if not record.metrics:
            continue
        labels = {"namespace": namespace, "server_id": record.server_id, "agent_address": record.address}
        labels.update({f"label_{key}": value for key, value in record.labels.items()})
        out.append({"targets": [record.metrics], "labels": labels})
    return out


def write_targets(path: str, targets: list[dict[str, Any]]) -> None:
    """Replace path with the target list in one step (a temporary file renamed over it)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".targets-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(targets, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


async def write_from_registry(view: ServerView, path: str, watch: bool = False, interval: float = 1.0,
                              stop: asyncio.Event | None = None) -> int:
    """Write path from the view's servers; with watch, rewrite it on every change until stop. The count."""
    await view.ensure_started()
    written: list[dict[str, Any]] | None = None
    while True:
        targets = targets_of(view.current(), view.namespace)
        if targets != written:
            write_targets(path, targets)
            if written is not None:
                log.info("prometheus targets: %d server(s) in %s", len(targets), path)
            written = targets
        if not watch:
            return len(targets)
        if stop is not None:
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return len(targets)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(interval)
        if not view.ready:          # the watch ended (etcd restarted): read everything again
            await view.ensure_started()
