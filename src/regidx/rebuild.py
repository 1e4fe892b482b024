"""Index from a full scan: `index rebuild` swaps a fresh one in, `index verify` compares one with it."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import RegidxError, StorageError
from .index import SCHEMA_VERSION, BulkLoad, LmdbIndex
from .indexdir import TRUSTED, IndexDir
from .layout import Layout
from .scan import (Progress, RepoScan, StorageScan, all_dirstate, blob_records, iter_records, repo_records,
                   scan_storage)

# Directory mtimes come from a coarse clock (a few ms). A directory modified within this much of
# the scan's start may have changed after it was read without its mtime showing it: scan again.
FRESH_NS = 50_000_000


@dataclass
class RebuildStats:
    repositories: int
    revisions: int
    blobs: int
    candidates: int
    seconds: float
    index_bytes: int
    path: str


@dataclass
class Loaded:
    """A full scan gathered for an index: the records (BulkLoad) and the directory mtimes."""

    load: BulkLoad
    dirstate: dict[str, int]
    repositories: int


def scan_into_load(layout: Layout, now: float, clocks: dict[str, float] | None = None,
                   progress: Progress | None = None, *, settle: bool = True, attempts: int = 4) -> Loaded:
    """A full scan, fed to a BulkLoad repository by repository while the workers go on.

    settle: retry until no directory it records changed during the scan (see FRESH_NS); the daemon
    passes False because its watches see whatever changes meanwhile.
    """
    for _ in range(attempts):
        start = time.time_ns()
        loaded = Loaded(BulkLoad(now, clocks), {}, 0)

        def take(repo: RepoScan) -> None:
            loaded.load.add(repo_records(repo))
            loaded.dirstate.update(repo.dirstate)
            loaded.repositories += 1

        scan = scan_storage(layout, read_tags=True, full=True, progress=progress, sink=take)
        loaded.load.add(blob_records(scan.blobs))
        loaded.dirstate.update(scan.dirstate)
        fresh = [path for path, mtime in loaded.dirstate.items() if mtime >= start - FRESH_NS]
        if not settle or not fresh:
            return loaded
        time.sleep(2 * FRESH_NS / 1e9)
    raise StorageError(f"{os.path.join(layout.v2, fresh[0])}: the tree kept changing during the scan; "
                       "stop the registry (or make it read-only) for a rebuild, or run `regidx daemon`")


def build_index(path: str, layout: Layout, loaded: Loaded) -> LmdbIndex:
    """Write a loaded scan into a new LMDB environment at path, marked trusted."""
    index = LmdbIndex(path, building=True)
    index.env.set_mapsize(max(index.env.info()["map_size"], _estimate_map_size(loaded.load)))
    loaded.load.write(index)
    with index.write() as txn:
        for relpath, mtime in loaded.dirstate.items():
            txn.set_dirstate(relpath, mtime)
        txn.set_meta("schema", SCHEMA_VERSION.decode())
        txn.set_meta("root", os.path.realpath(layout.root))
        txn.set_meta("state", TRUSTED)
        txn.set_meta("last_full_scan", repr(loaded.load.now))
    index.env.sync(True)
    return index


def index_from_scan(path: str, layout: Layout, scan: StorageScan, now: float) -> LmdbIndex:
    """For callers that already hold a whole scan (tests)."""
    load = BulkLoad(now)
    load.add(iter_records(scan))
    return build_index(path, layout, Loaded(load, dict(all_dirstate(scan)), len(scan.repos)))


def rebuild_index(layout: Layout, index_dir: IndexDir, progress: Progress | None = None,
                  *, settle: bool = True) -> RebuildStats:
    """settle=False when watches are already in place (the daemon): changes during the scan are
    then seen as events, so the tree need not hold still."""
    started = time.monotonic()
    loaded = scan_into_load(layout, time.time(), _old_clocks(index_dir), progress, settle=settle)
    gen = index_dir.new_generation()
    try:
        with build_index(gen, layout, loaded) as index:
            with index.read() as txn:
                counts = txn.counts()
            size = index.size_bytes()
        index_dir.switch(gen)
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)
        raise
    return RebuildStats(
        repositories=loaded.repositories, revisions=counts["manifests"], blobs=counts["blobs"],
        candidates=counts["candidates"], seconds=time.monotonic() - started, index_bytes=size, path=gen,
    )


@dataclass(frozen=True)
class Discrepancy:
    kind: str  # e.g. "blob missing from index"
    key: str
    index: Any
    storage: Any

    def __str__(self) -> str:
        return f"{self.kind}: {self.key} (index: {_show(self.index)}, storage: {_show(self.storage)})"


def verify_index(layout: Layout, index: LmdbIndex, progress: Progress | None = None) -> list[Discrepancy]:
    """Every difference between the index and a fresh full scan of the tree."""
    loaded = scan_into_load(layout, time.time(), progress=progress)
    with tempfile.TemporaryDirectory(prefix="verify-", dir=os.path.dirname(index.path)) as tmp:
        with build_index(tmp, layout, loaded) as fresh:
            with fresh.read() as txn:
                expected = txn.dump()
    with index.read() as txn:
        actual = txn.dump()
    return list(diff_dumps(actual, expected))


_NAMES = {
    "blobs": "blob", "manifests": "manifest", "refs": "reference count", "candidates": "candidate",
    "tags": "tag", "tagged": "tag count", "untagged": "untagged manifest", "layers": "layer link",
    "pending": "revision waiting for data", "uploads": "upload",
}


def diff_dumps(actual: dict[str, Any], expected: dict[str, Any]) -> Iterator[Discrepancy]:
    for table, name in _NAMES.items():
        have, want = actual[table], expected[table]
        if isinstance(want, set):
            for key in sorted(want - have):
                yield Discrepancy(f"{name} missing from index", key, None, True)
            for key in sorted(have - want):
                yield Discrepancy(f"stale {name} in index", key, True, None)
            continue
        for key in sorted(want.keys() - have.keys()):
            yield Discrepancy(f"{name} missing from index", key, None, _plain(want[key]))
        for key in sorted(have.keys() - want.keys()):
            yield Discrepancy(f"stale {name} in index", key, _plain(have[key]), None)
        for key in sorted(have.keys() & want.keys()):
            if have[key] != want[key]:
                if table == "refs":
                    yield Discrepancy("wrong reference count", key, len(have[key]), len(want[key]))
                else:
                    yield Discrepancy(f"{name} differs", key, _plain(have[key]), _plain(want[key]))


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    if value is None:
        return "absent"
    if value is True:
        return "present"
    return str(value)


def _old_clocks(index_dir: IndexDir) -> dict[str, float]:
    """Grace clocks of the index being replaced, if it is trusted: a rebuild should not restart them."""
    try:
        old = index_dir.open(readonly=True)
    except RegidxError:  # no index yet, or one of another schema: start every clock now
        return {}
    with old, old.read() as txn:
        if txn.get_meta("state") != TRUSTED:
            return {}
        return dict(txn.iter_candidates(float("inf")))


def _estimate_map_size(load: BulkLoad) -> int:
    items = len(load.blobs) + 8 * len(load.manifests) + len(load.layers) + len(load.tags)
    return max(1 << 30, items * 1024)
