"""The indexer daemon: watches first, then reconcile, then events applied in batches, until SIGTERM."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from .errors import IndexError_, RegidxError, UsageError
from .index import IndexTxn, LmdbIndex
from .indexdir import IndexDir
from .layout import Kind, Layout, PathInfo, read_link
from .metrics import Metrics
from .rebuild import rebuild_index, verify_index
from .records import (BlobAdded, BlobRemoved, LayerLinked, LayerUnlinked, Record, RevisionLinked, RevisionUnlinked,
                      TagRemoved, TagSet, UploadRemoved, UploadStarted)
from .scan import check_root, read_manifest, read_startedat
from .sweep import restore_in, sweep
from .trash import Trash
from .watcher import Special, Touch, TreeWatcher, count_needed_watches, inotify_limit

log = logging.getLogger("regidx.daemon")

BATCH_MAX = 5000
BATCH_WAIT = 0.02  # seconds to gather a batch once the first touch arrived
RETRY_FIRST, RETRY_MAX, RETRY_ATTEMPTS = 0.02, 2.0, 12
WATCH_RETRY = 5.0  # seconds between attempts to add watches that failed


@dataclass
class Options:
    poll: float | None = None  # seconds between polls (watchdog's polling observer) instead of inotify
    metrics_addr: str | None = None
    sweep_every: float | None = None
    verify_every: float | None = None
    purge_trash_every: float | None = None
    grace: float = 24 * 3600
    delete_untagged: bool = False
    trash_retention: float = 7 * 24 * 3600


@dataclass
class _Retry:
    due: float
    info: PathInfo
    attempts: int
    first_seen: float


@dataclass
class Daemon:
    """Keeps one index equal to the tree. `index` is None only while a reconcile swaps generations."""

    layout: Layout
    index_dir: IndexDir
    trash: Trash
    options: Options
    touches: queue.Queue[Touch] = field(default_factory=queue.Queue)
    stopping: bool = False
    index: LmdbIndex | None = None

    def run(self) -> None:
        with self.index_dir.lock("daemon", name="daemon.lock"):
            self._check_watch_budget()
            self.metrics = Metrics(self.options.metrics_addr)
            self.watcher = self._start_watcher()
            try:
                self._install_signals()
                self._reconcile("startup")
                self._loop()
            finally:
                self.watcher.stop()
                if self.index is not None:
                    self.index.close()
        log.info("stopped")

    # startup ------------------------------------------------------------------------------------------

    def _check_watch_budget(self) -> None:
        if self.options.poll:
            return
        needed, limit = count_needed_watches(self.layout), inotify_limit()
        log.info("the tree needs about %d inotify watches; the limit is %s", needed, limit)
        if limit is not None and needed > limit * 0.9:
            raise UsageError(
                f"the tree needs about {needed} inotify watches but fs.inotify.max_user_watches is {limit}; "
                f"raise it (sysctl -w fs.inotify.max_user_watches={max(needed * 2, 65536)}) or use --poll"
            )

    def _start_watcher(self) -> TreeWatcher:
        started = time.monotonic()
        check_root(self.layout)
        # A registry that has taken no push yet has neither: create them, so they can be watched.
        os.makedirs(self.layout.repositories, exist_ok=True)
        os.makedirs(self.layout.blobs, exist_ok=True)
        if self.options.poll:
            from .poller import PollingWatcher

            watcher: TreeWatcher = PollingWatcher(self.layout, self.index_dir.fence_dir, self.touches,
                                                  self.options.poll)  # type: ignore[assignment]
        else:
            watcher = TreeWatcher(self.layout, self.index_dir.fence_dir, self.touches)
        watcher.start()
        log.info("watching %d directories (%.1fs)", watcher.watches, time.monotonic() - started)
        return watcher

    def _install_signals(self) -> None:
        def stop(signum: int, frame: object) -> None:
            log.info("signal %d: finishing the current batch", signum)
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _reconcile(self, why: str) -> None:
        """Make the index equal the tree: a full scan with the watches already in place, so every change
        made during it is also queued as a touch and applied afterwards."""
        if self.index is not None:
            self.index.close()
            self.index = None
        log.info("reconciling the index with the tree (%s)", why)
        with self.index_dir.lock("daemon reconcile", wait=True):
            # In a child process: the full scan's bulk load needs about 1 GB for 100,000 images,
            # which a long-running daemon should not keep as its high-water mark. Spawned, not
            # forked: this process has threads (the inotify reader).
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                stats = pool.submit(rebuild_index, self.layout, self.index_dir, settle=False).result()
        self.index = self.index_dir.open()
        # Fences written before the scan started are satisfied by it (the watcher's first listing skips them).
        pending = [f for f in _listdir(self.index_dir.fence_dir) if f.startswith("fence-")]
        if pending:
            with self.idx.write() as txn:
                _ack_fences(txn, pending)
        self.metrics.reconciled(stats.seconds)
        log.info("index reconciled: %d revisions, %d blobs, %d unreferenced, %.1fs",
                 stats.revisions, stats.blobs, stats.candidates, stats.seconds)

    # the loop -------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        retries: list[_Retry] = []
        timers = {name: time.monotonic() for name in ("sweep", "verify", "purge", "gauges")}
        while not self.stopping:
            batch = self._gather(timeout=self._next_due(retries))
            now = time.monotonic()
            due = [r for r in retries if r.due <= now]
            retries = [r for r in retries if r.due > now]
            if batch or due:
                retries += self._process(batch, due)
            if self.watcher.failed and now - timers.setdefault("watches", now) >= WATCH_RETRY:
                timers["watches"] = now
                self._retry_failed_watches()
            self._run_schedules(timers)

    def _gather(self, timeout: float) -> list[Touch]:
        try:
            first = self.touches.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + BATCH_WAIT
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self.touches.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    @staticmethod
    def _next_due(retries: list[_Retry]) -> float:
        if not retries:
            return 0.5
        return max(0.0, min(r.due for r in retries) - time.monotonic())

    def _process(self, batch: list[Touch], due: list[_Retry]) -> list[_Retry]:
        """Apply one batch in one write transaction; returns what must be looked at again later."""
        fences: list[str] = []
        retries: list[_Retry] = []
        untrusted = ""
        now = time.time()
        # One look per thing per batch: inotify reports a link's create, write and close separately.
        firsts: dict[PathInfo, float] = {}
        for t in batch:
            if t.info is not None:
                firsts.setdefault(t.info, t.at)
            elif t.special is Special.FENCE:
                fences.append(t.detail)
            else:  # an overflow or a watch that failed
                untrusted = f"{t.special.value}: {t.detail}" if t.special else t.detail
                log.error("index untrusted: %s", untrusted)
        work = [(info, at, None) for info, at in firsts.items()] + [(r.info, r.first_seen, r) for r in due]
        applied = 0
        with self.idx.write() as txn:
            for info, seen_at, retry in work:
                try:
                    records = self._examine(txn, info, now)
                except (_NotYet, OSError) as e:
                    # Caught mid-write, or it changed while we read it: look again shortly.
                    attempts = retry.attempts + 1 if retry else 1
                    if attempts >= RETRY_ATTEMPTS:
                        untrusted = untrusted or f"{e}: still unreadable after {attempts} attempts"
                        log.error("index untrusted: %s", untrusted)
                    else:
                        delay = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
                        retries.append(_Retry(time.monotonic() + delay, info, attempts, seen_at))
                    continue
                except RegidxError as e:
                    untrusted = untrusted or str(e)
                    log.error("index untrusted: %s", e)
                    continue
                for record in records:
                    if txn.apply(record, now, self._loader):
                        # Uploads come and go with every blob push: worth a line only when debugging.
                        level = logging.DEBUG if isinstance(record, (UploadStarted, UploadRemoved)) else logging.INFO
                        log.log(level, "%s", _describe(record))
                        applied += 1
                self.metrics.lag(time.monotonic() - seen_at)
            if untrusted:
                txn.set_meta("state", f"untrusted: {untrusted}")
            txn.set_meta("heartbeat", repr(now))
            if fences:
                _ack_fences(txn, fences)
        for fence in fences:
            _unlink(os.path.join(self.index_dir.fence_dir, fence))
        self.metrics.applied(applied)
        if untrusted and not self.watcher.failed:
            self._reconcile(untrusted)  # a rescan of what may have been missed; then trusted again
        return retries

    @property
    def idx(self) -> LmdbIndex:
        assert self.index is not None, "used only between reconciles"
        return self.index

    def _loader(self, repo: str, digest: str):  # type: ignore[no-untyped-def]
        return read_manifest(self.layout, repo, digest)

    # one thing, re-read from disk --------------------------------------------------------------------

    def _examine(self, txn: IndexTxn, info: PathInfo, now: float) -> list[Record]:
        layout = self.layout
        if info.kind is Kind.REVISION_LINK:
            link = os.path.join(layout.revision_dir(info.repo, info.digest), "link")
            target = _read_link_or_none(link)
            if target is None:
                return [RevisionUnlinked(info.repo, info.digest)]
            if target != info.digest:
                raise _NotYet(f"{link}: holds {target}")
            manifest = read_manifest(layout, info.repo, info.digest)
            if manifest is None and self._restore(txn, info.digest, f"{info.repo}@{info.digest} is linked"):
                manifest = read_manifest(layout, info.repo, info.digest)
            if manifest is not None:
                for ref in manifest.references:
                    self._restore(txn, ref, f"{info.repo}@{info.digest} references it")
            return [RevisionLinked(info.repo, info.digest, manifest)]
        if info.kind is Kind.TAG_CURRENT_LINK:
            target = _read_link_or_none(layout.tag_current_link(info.repo, info.tag))
            return [TagRemoved(info.repo, info.tag) if target is None else TagSet(info.repo, info.tag, target)]
        if info.kind is Kind.LAYER_LINK:
            if not os.path.isdir(layout.layer_link_dir(info.repo, info.digest)):
                return [LayerUnlinked(info.repo, info.digest)]
            self._restore(txn, info.digest, f"{info.repo} links it")
            return [LayerLinked(info.repo, info.digest)]
        if info.kind is Kind.BLOB_DATA:
            try:
                st = os.lstat(layout.blob_data(info.digest))
            except FileNotFoundError:
                if os.path.isdir(layout.blob_dir(info.digest)):
                    return []  # its data file is still on its way; the directory is watched
                return [BlobRemoved(info.digest)]
            self.watcher.unwatch_blob_dir(info.digest)
            return [BlobAdded(info.digest, st.st_size, st.st_mtime_ns)]
        if info.kind is Kind.UPLOAD:
            path = os.path.join(layout.uploads_dir(info.repo), info.upload)
            if not os.path.isdir(path):
                return [UploadRemoved(info.repo, info.upload)]
            started = read_startedat(path)
            try:
                fresh = time.time() - os.lstat(path).st_mtime < 5
            except FileNotFoundError:
                return [UploadRemoved(info.repo, info.upload)]  # finished meanwhile
            if not started and fresh:
                raise _NotYet(f"{path}/startedat")  # written right after the directory
            return [UploadStarted(info.repo, info.upload, started)]
        if info.kind is Kind.REPOSITORY:
            return [r for thing in txn.things_in_repository(info.repo) for r in self._examine(txn, thing, now)]
        return []

    def _restore(self, txn: IndexTxn, digest: str, why: str) -> bool:
        """Auto-restore: a blob that a sweep moved to the trash is wanted again. Move it back at once."""
        if txn.blob(digest) is not None:
            return False
        entry = self.trash.get(digest)
        if entry is None or not entry.has_data:
            return False
        restored = restore_in(txn, self.layout, self.trash, entry)
        self.metrics.restored()
        log.warning("restored %s from the trash: %s", digest, why)
        return restored

    # scheduled work --------------------------------------------------------------------------------

    def _run_schedules(self, timers: dict[str, float]) -> None:
        now = time.monotonic()
        if now - timers["gauges"] >= 10:
            timers["gauges"] = now
            self.metrics.refresh(self.index, self.watcher.watches)
        o = self.options
        for name, every, job in (("sweep", o.sweep_every, self._sweep), ("verify", o.verify_every, self._verify),
                                 ("purge", o.purge_trash_every, self._purge)):
            if every and now - timers[name] >= every:
                timers[name] = now
                try:
                    job()
                except RegidxError as e:
                    log.error("scheduled %s failed: %s", name, e)

    def _sweep(self) -> None:
        # Everything queued before now is applied first: that is the fence, in-process.
        self._process(self._drain(), [])
        with self.index_dir.lock("daemon sweep", wait=True):
            result = sweep(self.idx, self.layout, self.trash, dry_run=False, grace=self.options.grace,
                           delete_untagged=self.options.delete_untagged)
        self.metrics.swept(result)
        log.info("scheduled sweep: %d blobs (%d bytes) and %d manifests into the trash",
                 len(result.blobs), result.bytes, len(result.manifests))

    def _verify(self) -> None:
        self._process(self._drain(), [])
        found = verify_index(self.layout, self.idx)
        self.metrics.verified(len(found))
        if found:
            log.error("scheduled verify: %d differences, first: %s; reconciling", len(found), found[0])
            self._reconcile("verify found differences")
        else:
            log.info("scheduled verify: the index agrees with the tree")

    def _purge(self) -> None:
        purged = self.trash.purge(self.options.trash_retention)
        log.info("scheduled purge: %d trash entries older than %.0fs", len(purged), self.options.trash_retention)

    def _drain(self) -> list[Touch]:
        out = []
        while True:
            try:
                out.append(self.touches.get_nowait())
            except queue.Empty:
                return out

    def _retry_failed_watches(self) -> None:
        """Directories we could not watch (the kernel's limit): try again; once all are watched, rescan."""
        if self.watcher.retry_failed():
            self._reconcile("every directory is watched again")
        else:
            log.error("%d directories still cannot be watched (first: %s); the index stays untrusted; "
                      "raise fs.inotify.max_user_watches", len(self.watcher.failed), self.watcher.failed[0])


class _NotYet(Exception):
    """A file caught mid-write (an empty link, a startedat not yet written): look again shortly."""


def _read_link_or_none(path: str) -> str | None:
    try:
        return read_link(path)
    except FileNotFoundError:
        return None
    except (RegidxError, OSError) as e:
        raise _NotYet(str(e)) from None


def _ack_fences(txn: IndexTxn, names: list[str]) -> None:
    """Fence names sort by creation time; the index remembers the newest one it has caught up with."""
    newest = max(names + [txn.get_meta("fence") or ""])
    txn.set_meta("fence", newest)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _describe(record: Record) -> str:
    fields = " ".join(str(v) for k, v in record._asdict().items() if k != "manifest")
    return f"{type(record).__name__} {fields}"


def wait_for_fence(index_dir: IndexDir, timeout: float) -> None:
    """Make sure every change made to the tree before now is in the index (a running daemon applies it)."""
    name = f"fence-{time.time_ns():020d}-{os.getpid()}"
    os.makedirs(index_dir.fence_dir, exist_ok=True)
    with open(os.path.join(index_dir.fence_dir, name), "w") as f:
        f.write(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Opened each time: a reconcile may switch generations meanwhile.
        with index_dir.open(readonly=True) as index, index.read() as txn:
            if txn.get_meta("fence") == name:
                return
        time.sleep(0.01)
    _unlink(os.path.join(index_dir.fence_dir, name))
    raise IndexError_(f"the daemon did not apply pending changes within {timeout:.0f}s (fence {name}); "
                      "is it stuck? see its log, or stop it and run `regidx index rebuild`")


