"""Prometheus metrics of the daemon (prometheus-client), served on --metrics-addr when given."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from .index import LmdbIndex
    from .sweep import SweepResult


class Metrics:
    def __init__(self, addr: str | None) -> None:
        r = self.registry = CollectorRegistry()
        self.blobs = Gauge("regidx_blobs", "Blobs in the index", registry=r)
        self.bytes = Gauge("regidx_blob_bytes", "Bytes of the blobs in the index", registry=r)
        self.candidates = Gauge("regidx_candidates", "Unreferenced blobs (sweep candidates)", registry=r)
        self.reclaimable = Gauge("regidx_reclaimable_bytes", "Bytes of the unreferenced blobs", registry=r)
        self.manifests = Gauge("regidx_revisions", "Manifest revisions in the index", registry=r)
        self.watches = Gauge("regidx_inotify_watches", "inotify watches in use", registry=r)
        self.events = Counter("regidx_events_applied", "Records applied to the index", registry=r)
        self.event_lag = Histogram("regidx_event_lag_seconds", "From a filesystem event to its index commit",
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.restores = Counter("regidx_auto_restores", "Blobs moved back from the trash because they were wanted",
                                registry=r)
        self.last_reconcile = Gauge("regidx_last_reconcile_seconds", "Duration of the last reconcile", registry=r)
        self.last_sweep_time = Gauge("regidx_last_sweep_timestamp", "When the last scheduled sweep ended", registry=r)
        self.last_sweep_blobs = Gauge("regidx_last_sweep_blobs", "Blobs the last scheduled sweep removed", registry=r)
        self.last_sweep_bytes = Gauge("regidx_last_sweep_bytes", "Bytes the last scheduled sweep removed", registry=r)
        self.last_verify_time = Gauge("regidx_last_verify_timestamp", "When the last verify ended", registry=r)
        self.last_verify_diffs = Gauge("regidx_last_verify_differences", "Differences the last verify found",
                                       registry=r)
        if addr:
            host, _, port = addr.rpartition(":")
            start_http_server(int(port), addr=host or "127.0.0.1", registry=r)

    def lag(self, seconds: float) -> None:
        self.event_lag.observe(seconds)

    def applied(self, n: int) -> None:
        self.events.inc(n)

    def restored(self) -> None:
        self.restores.inc()

    def reconciled(self, seconds: float) -> None:
        self.last_reconcile.set(seconds)

    def swept(self, result: SweepResult) -> None:
        self.last_sweep_time.set(time.time())
        self.last_sweep_blobs.set(len(result.blobs))
        self.last_sweep_bytes.set(result.bytes)

    def verified(self, differences: int) -> None:
        self.last_verify_time.set(time.time())
        self.last_verify_diffs.set(differences)

    def refresh(self, index: LmdbIndex | None, watches: int) -> None:
        self.watches.set(watches)
        if index is None:
            return
        with index.read() as txn:
            summary = txn.summary()
        self.blobs.set(summary["blobs"])
        self.bytes.set(summary["bytes"])
        self.candidates.set(summary["candidates"])
        self.reclaimable.set(summary["reclaimable_bytes"])
        self.manifests.set(summary["revisions"])
