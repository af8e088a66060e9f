"""``agentmesh top``: a live view of the registry's servers, from their records and metrics endpoints.

Every second it reads the servers of a namespace (verified records) and
scrapes each one's ``/metrics``; rates and percentiles come from the
difference between two scrapes. ``--once --json`` prints one such sample
for scripts. The screen is drawn with rich.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .. import _trust
from .._metrics import DURATION_BUCKETS
from ..discovery import ServerRecord, ServerView
from ..discovery.records import printable
from ..etcd import EtcdError, redact_url
from ._args import _settings


def scrape(address: str, timeout: float = 1.0) -> list | None:
    """Every sample at http://address/metrics, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _sum(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _buckets(samples: list) -> dict[float, float]:
    """Server-side duration buckets summed over classes and methods: {upper bound: cumulative count}."""
    out: dict[float, float] = {}
    for s in samples:
        if s.name == "agentmesh_call_duration_seconds_bucket" and s.labels.get("side") == "server":
            bound = float(s.labels["le"])
            out[bound] = out.get(bound, 0.0) + s.value
    return out


def _quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The q-quantile of the calls between two scrapes, from the histogram (upper bound of its bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    for bound, cumulative in zip(bounds, counts):
        if cumulative >= rank:
            return bound if bound != float("inf") else DURATION_BUCKETS[-1]
    return None


def sample(records: list[ServerRecord], before: dict[str, tuple[float, list]] | None) -> tuple[list[dict], dict]:
    """One row per server; with the previous scrapes, its rates and percentiles since then."""
    now = time.monotonic()
    scrapes: dict[str, tuple[float, list]] = {}
    rows = []
    for record in sorted(records, key=lambda r: r.address):
        row: dict[str, Any] = {"server_id": record.server_id, "address": record.address, "status": record.status,
                               "agents": record.agents, "capacity": record.capacity, "inflight": record.inflight,
                               "metrics": record.metrics}
        samples = scrape(record.metrics) if record.metrics else None
        if samples is not None:
            scrapes[row["server_id"]] = (now, samples)
            row.update(queued=_sum(samples, "agentmesh_queued_calls"),
                       inflight=_sum(samples, "agentmesh_inflight_calls"),
                       sessions=_sum(samples, "agentmesh_sessions"),
                       calls=_sum(samples, "agentmesh_calls_total"),
                       moved_in=_sum(samples, "agentmesh_agents_restored_total"))
            last = (before or {}).get(row["server_id"])
            if last is not None and now > last[0]:
                elapsed = now - last[0]
                row["calls_per_s"] = (row["calls"] - _sum(last[1], "agentmesh_calls_total")) / elapsed
                errors = row["calls"] - _sum(samples, "agentmesh_calls_total", status="OK")
                old_errors = _sum(last[1], "agentmesh_calls_total") - _sum(last[1], "agentmesh_calls_total",
                                                                          status="OK")
                row["errors_per_s"] = (errors - old_errors) / elapsed
                row["p50_s"] = _quantile(0.5, _buckets(last[1]), _buckets(samples))
                row["p99_s"] = _quantile(0.99, _buckets(last[1]), _buckets(samples))
        rows.append(row)
    return rows, scrapes


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.1f} s"


def render(rows: list[dict], title: str) -> Any:
    """The rows as a rich table; a record's text is shown as text (no control characters, no rich markup).

    No header and no server id or address is ever cut short: each column is at
    least as wide as its header, those two as wide as their longest value; a
    terminal too narrow for the table shows its left part.
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("SERVER", "ADDRESS", "STATUS", "AGENTS", "CALLS/S", "ERR/S", "P50", "P99", "INFLIGHT", "QUEUED",
                 "SESSIONS", "MOVED IN"):
        key = {"SERVER": "server_id", "ADDRESS": "address"}.get(name)
        width = max([len(name)] + [len(printable(r[key])) for r in rows if key])
        table.add_column(name, justify="left" if name in ("SERVER", "ADDRESS", "STATUS") else "right",
                         no_wrap=True, min_width=width)
    for r in rows:
        table.add_row(*(escape(printable(r[name])) for name in ("server_id", "address", "status")),
                      f"{r['agents']}/{r['capacity']}",
                      f"{r['calls_per_s']:.1f}" if "calls_per_s" in r else "-",
                      f"{r['errors_per_s']:.1f}" if "errors_per_s" in r else "-",
                      _fmt_seconds(r.get("p50_s")), _fmt_seconds(r.get("p99_s")),
                      f"{r['inflight']:.0f}", f"{r['queued']:.0f}" if "queued" in r else "-",
                      f"{r['sessions']:.0f}" if "sessions" in r else "-",
                      f"{r['moved_in']:.0f}" if "moved_in" in r else "-")
    return table


def _console() -> Any:
    """A console as wide as the terminal; writing to a file or a pipe, as wide as the table (rich would assume
    80 columns there and cut every header)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=10_000)


def cmd_top(args: argparse.Namespace) -> int:
    """Show the servers live (Ctrl-C ends), or print one sample with --once."""
    if not args.registry:
        raise SystemExit("agentmesh top: no registry: give --registry etcd://host:port or set AGENTMESH_REGISTRY")
    settings = _settings(args)
    if not settings.token:
        raise SystemExit("agentmesh top: needs the namespace token (AGENTMESH_TOKEN_FILE or AGENTMESH_TOKEN) to "
                         "verify the servers' records")
    view = ServerView(args.registry, args.namespace, settings.registry_timeout, settings.etcd_options(),
                      key=_trust.namespace_key(settings.token, args.namespace))
    title = f"agentmesh top — namespace {args.namespace!r} of {redact_url(args.registry)}"

    async def run() -> int:
        try:
            return await show()
        finally:
            await view.close()

    async def show() -> int:
        loop = asyncio.get_running_loop()
        await view.ensure_started()
        rows, scrapes = await loop.run_in_executor(None, sample, view.current(), None)
        if args.once:
            await asyncio.sleep(args.interval)
            rows, _ = await loop.run_in_executor(None, sample, view.current(), scrapes)
            if args.json:
                print(json.dumps(rows, indent=2, sort_keys=True))
            else:
                _console().print(render(rows, title))
            return 0
        from rich.live import Live
        with Live(render(rows, title), refresh_per_second=4, screen=False) as live:
            while True:
                await asyncio.sleep(args.interval)
                if not view.ready:
                    await view.ensure_started()
                rows, scrapes = await loop.run_in_executor(None, sample, view.current(), scrapes)
                live.update(render(rows, f"{title} — {time.strftime('%H:%M:%S')}"))

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    except EtcdError as exc:
        raise SystemExit(f"agentmesh top: registry {redact_url(args.registry)}: {exc}") from None
