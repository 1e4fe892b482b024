"""--poll: watchdog's directory snapshots instead of inotify, for filesystems where inotify cannot see
other hosts' writes (NFS). Slower (every poll walks the tree) but it needs no watches."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

from .layout import Kind, Layout, PathInfo
from .watcher import Special, Touch

log = logging.getLogger("regidx.poller")


class PollingWatcher:
    """Same interface as TreeWatcher. Fence files are read *before* each snapshot and reported after
    its changes, so every change made before a fence is reported before it."""

    def __init__(self, layout: Layout, fence_dir: str, touches: queue.Queue[Touch], interval: float) -> None:
        self.layout = layout
        self.fence_dir = fence_dir
        self.touches = touches
        self.interval = interval
        self.failed: list[str] = []
        self.watches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="regidx-poller", daemon=True)

    def start(self) -> None:
        os.makedirs(self.fence_dir, exist_ok=True)
        self._snapshot = DirectorySnapshot(self.layout.v2, recursive=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def unwatch_blob_dir(self, digest: str) -> None:
        pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            fences = sorted(os.listdir(self.fence_dir))
            try:
                snapshot = DirectorySnapshot(self.layout.v2, recursive=True)
            except OSError as e:
                log.warning("poll failed: %s", e)
                continue
            diff = DirectorySnapshotDiff(self._snapshot, snapshot)
            self._snapshot = snapshot
            now = time.monotonic()
            paths = (diff.files_created + diff.files_deleted + diff.files_modified + diff.dirs_created
                     + diff.dirs_deleted + [p for pair in diff.files_moved + diff.dirs_moved for p in pair])
            for path in paths:
                info = self.classify(os.fsdecode(path))
                if info is not None:
                    self.touches.put(Touch(info, None, "", now))
            for fence in fences:
                self.touches.put(Touch(None, Special.FENCE, fence, now))

    def classify(self, path: str) -> PathInfo | None:
        """What a changed path (file or directory) means, as a thing to look at again."""
        for candidate in (path, f"{path}/link", f"{path}/data"):
            info = self.layout.classify(candidate)
            if info is None:
                continue
            if info.kind is Kind.TAG_DIR:
                return info._replace(kind=Kind.TAG_CURRENT_LINK)
            if info.kind is Kind.TAG_INDEX_LINK:
                return None
            return info
        return None
