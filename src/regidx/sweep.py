"""The fast sweep: candidates come from the index, are re-checked, leave storage, then the index."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import IndexError_
from .index import IndexTxn, LmdbIndex
from .indexdir import TRUSTED
from .layout import Layout, write_link
from .removal import remove_layer_link, remove_revision, rmtree
from .scan import mtime_or_absent
from .records import BlobAdded, LayerLinked
from .trash import Trash, TrashEntry

BATCH = 500


@dataclass
class SweepResult:
    dry_run: bool
    manifests: list[tuple[str, str]] = field(default_factory=list)  # (repo, digest)
    blobs: list[tuple[str, int]] = field(default_factory=list)  # (digest, size)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (digest, why)
    layer_links: int = 0
    # digest -> repositories whose layer link went with it (the registry caches per repository).
    linked_from: dict[str, list[str]] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.blobs)


# --- may the index be trusted? -----------------------------------------------------------------


def check_trusted(txn: IndexTxn, layout: Layout) -> None:
    state = txn.get_meta("state")
    if state != TRUSTED:
        raise IndexError_(f"index is not trusted ({state}); run `regidx index rebuild CONFIG`")
    root = txn.get_meta("root")
    if root != os.path.realpath(layout.root):
        raise IndexError_(f"index was built for {root}, not {layout.root}; use the right --index-dir or rebuild")


def find_changes(txn: IndexTxn, layout: Layout, *, include_tags: bool) -> list[str]:
    """Directories (and tag links) whose mtime moved since the last full scan: where an addition would show.

    A new repository, revision, layer link or tag changes the mtime of a directory the scan
    recorded (a retag in place changes current/link's own mtime). Without a daemon, a sweep
    acts only when none moved; see docs/safety.md.
    """
    return [relpath for relpath, mtime in txn.iter_dirstate(tags=include_tags)
            if mtime_or_absent(os.path.join(layout.v2, relpath)) != mtime]


# --- what is garbage (no side effects) -----------------------------------------------------------


class _Reachability:
    """Is an untagged revision kept under `delete-untagged`? The same rules as gc.plan_gc, asked
    backwards: walk from the revision up to whatever could keep it, and stop at the first root.

    A revision is kept when a tag points at it, when it is younger than the grace period, when a
    kept manifest anywhere references its digest (index children), when the same digest is kept
    in another repository, or when its `subject` is kept in the same repository (referrers).
    """

    def __init__(self, txn: IndexTxn, cutoff: float) -> None:
        self.txn = txn
        self.cutoff = cutoff
        self.known: dict[tuple[str, str], bool] = {}

    def kept(self, repo: str, digest: str) -> bool:
        visited: set[tuple[str, str]] = set()
        if self._search((repo, digest), visited):
            return True
        # Nothing reachable upwards from here is a root, so none of it is kept.
        for node in visited:
            self.known[node] = False
        return False

    def _search(self, node: tuple[str, str], visited: set[tuple[str, str]]) -> bool:
        if node in self.known:
            return self.known[node]
        if node in visited:
            return False
        visited.add(node)
        if self._is_root(*node) or any(self._search(parent, visited) for parent in self._parents(*node)):
            self.known[node] = True
            return True
        return False

    def _is_root(self, repo: str, digest: str) -> bool:
        if self.txn.tag_count(repo, digest):
            return True
        since = self.txn.untagged_since(repo, digest)
        return since is not None and since > self.cutoff

    def _parents(self, repo: str, digest: str) -> list[tuple[str, str]]:
        parents = [(r, m) for r, m in self.txn.holders(digest) if m != digest or r != repo]
        entry = self.txn.manifest(repo, digest)
        if entry is not None and entry.subject:
            subject = self.txn.manifest(repo, entry.subject)
            if subject is not None and subject.has_data:
                parents.append((repo, entry.subject))
        return parents


def find_garbage(txn: IndexTxn, layout: Layout, *, now: float, grace: float,
                 delete_untagged: bool) -> SweepResult:
    """What a sweep would remove now. Reads the index and stats candidate blobs; changes nothing."""
    cutoff = now - grace
    result = SweepResult(dry_run=True)
    doomed: set[tuple[str, str]] = set()
    if delete_untagged:
        reach = _Reachability(txn, cutoff)
        for repo, digest, since in list(txn.iter_untagged()):
            if since <= cutoff and not reach.kept(repo, digest):
                doomed.add((repo, digest))
                result.manifests.append((repo, digest))
    seen: set[str] = set()
    for digest, _ in txn.iter_candidates(cutoff):
        seen.add(digest)
        _consider_blob(txn, layout, digest, cutoff, result)
    if grace <= 0:
        # Blobs that only the doomed manifests hold become candidates during the sweep itself.
        for repo, digest in result.manifests:
            entry = txn.manifest(repo, digest)
            assert entry is not None
            for target in {digest, *entry.references} - seen:
                seen.add(target)
                if txn.blob(target) and all(h in doomed for h in txn.holders(target)):
                    _consider_blob(txn, layout, target, cutoff, result)
    return result


def _consider_blob(txn: IndexTxn, layout: Layout, digest: str, cutoff: float, result: SweepResult) -> None:
    # Planning trusts the data mtime the index recorded (blobs are never rewritten in place);
    # the removal stats the file again.
    blob = txn.blob(digest)
    if blob is None:
        return
    if blob.mtime_ns > cutoff * 1e9:
        result.skipped.append((digest, _TOO_YOUNG))
    else:
        result.blobs.append((digest, blob.size))


_TOO_YOUNG = "data file is younger than the grace period"


def _data_too_young(layout: Layout, digest: str, cutoff: float) -> str:
    try:
        mtime = os.lstat(layout.blob_data(digest)).st_mtime_ns
    except FileNotFoundError:
        return ""
    return _TOO_YOUNG if mtime > cutoff * 1e9 else ""


# --- removal ---------------------------------------------------------------------------------------


def sweep(index: LmdbIndex, layout: Layout, trash: Trash | None, *, dry_run: bool, grace: float,
          delete_untagged: bool, now: float | None = None,
          progress: Callable[[int], None] | None = None) -> SweepResult:
    """Find, then remove: manifests first (their blobs may become garbage), then blobs.

    Every item is re-checked inside the write transaction that removes it; storage changes
    before the index does, so an interrupted sweep leaves index entries for things already gone,
    which the next sweep finds and finishes.
    """
    now = time.time() if now is None else now
    cutoff = now - grace
    with index.read() as txn:
        check_trusted(txn, layout)
        plan = find_garbage(txn, layout, now=now, grace=grace, delete_untagged=delete_untagged)
    if dry_run:
        return plan
    result = SweepResult(dry_run=False)
    for batch in _batches(plan.manifests):
        with index.write() as txn:
            reach = _Reachability(txn, cutoff)
            for repo, digest in batch:
                since = txn.untagged_since(repo, digest)
                if since is None or since > cutoff or reach.kept(repo, digest):
                    continue
                _remove_manifest(txn, layout, repo, digest, now)
                result.manifests.append((repo, digest))
    with index.read() as txn:
        digests = [d for d, _ in txn.iter_candidates(cutoff)]
    for batch in _batches(digests):
        with index.write() as txn:
            for digest in batch:
                _remove_blob(txn, layout, trash, digest, cutoff, now, result)
        if progress:
            progress(len(batch))
    return result


def _remove_manifest(txn: IndexTxn, layout: Layout, repo: str, digest: str, now: float) -> None:
    remove_revision(layout, repo, digest)
    revision = layout.revision_dir(repo, digest)
    txn.set_dirstate(os.path.relpath(revision, layout.v2), None)
    _refresh(txn, layout, os.path.dirname(revision))
    txn.unlink_revision(repo, digest, now)


def _remove_blob(txn: IndexTxn, layout: Layout, trash: Trash | None, digest: str, cutoff: float,
                 now: float, result: SweepResult) -> None:
    blob = txn.blob(digest)
    if blob is None or not blob.since or blob.since > cutoff or txn.refcount(digest):
        return  # referenced again, or its clock restarted, since the plan was made
    why = _data_too_young(layout, digest, cutoff)
    if why:
        result.skipped.append((digest, why))
        return
    repos = txn.layer_repos(digest)
    for repo in repos:
        result.layer_links += remove_layer_link(layout, repo, digest)
        _refresh(txn, layout, os.path.dirname(layout.layer_link_dir(repo, digest)))
    if trash is not None:
        trash.put(layout, digest, blob.size, repos, now)
    else:
        rmtree(layout.blob_dir(digest))
    txn.forget_blob(digest, now)
    result.blobs.append((digest, blob.size))
    result.linked_from[digest] = repos


def restore(index: LmdbIndex, layout: Layout, trash: Trash, entry: TrashEntry) -> bool:
    """`gc restore`: one trash entry back, in a transaction of its own."""
    with index.write() as txn:
        return restore_in(txn, layout, trash, entry)


def restore_in(txn: IndexTxn, layout: Layout, trash: Trash, entry: TrashEntry) -> bool:
    """Blob back under blobs/, its layer links rewritten, the index told; False if it was back already.

    Also the daemon's auto-restore, inside the transaction that applies what wants the blob.
    """
    restored = trash.take_back(layout, entry)
    now = time.time()
    if restored:
        st = os.lstat(layout.blob_data(entry.digest))
        txn.apply(BlobAdded(entry.digest, st.st_size, st.st_mtime_ns), now)
    for repo in entry.layer_links:
        link_dir = layout.layer_link_dir(repo, entry.digest)
        write_link(os.path.join(link_dir, "link"), entry.digest)
        txn.apply(LayerLinked(repo, entry.digest), now)
        _refresh(txn, layout, os.path.dirname(link_dir))
    trash.remove(entry)
    return restored


def forget_repository_dirs(txn: IndexTxn, layout: Layout, repo: str) -> None:
    """A repository directory we removed: its recorded mtimes go, its parents' are refreshed."""
    base = layout.repo_dir(repo)
    txn.drop_dirstate_under(os.path.relpath(base, layout.v2))
    path = os.path.dirname(base)
    while len(path) >= len(layout.repositories):
        _refresh(txn, layout, path)
        path = os.path.dirname(path)


def _refresh(txn: IndexTxn, layout: Layout, path: str) -> None:
    """We changed this directory ourselves: record its new mtime so the next offline check passes."""
    txn.set_dirstate(os.path.relpath(path, layout.v2), mtime_or_absent(path))


def _batches(items: list, size: int = BATCH) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
