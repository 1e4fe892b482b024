"""Stop-the-world mark and sweep with the upstream `registry garbage-collect` semantics and output."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .layout import Layout
from .removal import remove_layer_link, remove_revision, rmtree
from .scan import RepoScan, StorageScan, stat_blobs


@dataclass
class GcPlan:
    """What a run marks and what it would delete. Computing it has no side effects."""

    delete_untagged: bool
    marked: set[str]
    # repo -> revisions kept (marked) there.
    kept: dict[str, set[str]]
    # (repo, digest) of untagged manifests to delete, in walk order (-m only).
    manifests: list[tuple[str, str]]
    # digest -> size of every blob to delete, sorted by digest.
    blobs: dict[str, int]

    @property
    def bytes(self) -> int:
        return sum(self.blobs.values())


@dataclass
class GcStats:
    blobs_deleted: int = 0
    bytes_deleted: int = 0
    manifests_deleted: int = 0
    layer_links_deleted: int = 0
    # digest -> repositories whose layer link went with it (the registry caches per repository).
    linked_from: dict[str, list[str]] = field(default_factory=dict)


def plan_gc(layout: Layout, scan: StorageScan, *, delete_untagged: bool) -> GcPlan:
    """Mark every blob a kept manifest needs; everything else under blobs/ is eligible.

    Plain mode keeps every revision whose data exists (upstream 2.8). With -m, a revision is kept
    when a tag points at it, when a kept index in the same repository lists it (recursively,
    as upstream v3 does), when its OCI `subject` is kept (referrers: signatures, SBOMs), or when
    its digest is marked by any repository (v3's "unmark referenced manifests"). The last rule
    feeds back into the others, so the marking runs to a fixpoint across repositories.
    """
    repos = scan.repos
    if not delete_untagged:
        kept = {r.name: set(r.manifests) for r in repos}
        marked = _mark(repos, kept)
    else:
        kept = {r.name: _closure(r, {d for d in r.tags.values() if d in r.manifests}) for r in repos}
        while True:
            marked = _mark(repos, kept)
            grown = False
            for r in repos:
                extra = {d for d in r.manifests if d in marked} - kept[r.name]
                if extra:
                    kept[r.name] = _closure(r, kept[r.name] | extra)
                    grown = True
            if not grown:
                break
    manifests = [
        (r.name, d) for r in repos for d in r.revisions if d in r.manifests and d not in kept[r.name]
    ]
    unmarked = {d: prefix for d, prefix in scan.listed.items() if d not in marked}
    blobs = {d: size for d, (size, _) in sorted(stat_blobs(layout, unmarked).items())}
    return GcPlan(delete_untagged, marked, kept, manifests, blobs)


def _mark(repos: list[RepoScan], kept: dict[str, set[str]]) -> set[str]:
    marked: set[str] = set()
    for r in repos:
        for digest in kept[r.name]:
            marked.add(digest)
            marked.update(r.manifests[digest].references)
    return marked


def _closure(repo: RepoScan, seeds: set[str]) -> set[str]:
    """seeds plus every manifest of the repository that a kept index lists or whose subject is kept."""
    referrers: dict[str, list[str]] = defaultdict(list)
    for digest, manifest in repo.manifests.items():
        if manifest.subject:
            referrers[manifest.subject].append(digest)
    kept = set(seeds)
    todo = list(seeds)
    while todo:
        digest = todo.pop()
        manifest = repo.manifests[digest]
        children = manifest.references if manifest.is_index else ()
        for d in (*children, *referrers.get(digest, ())):
            if d in repo.manifests and d not in kept:
                kept.add(d)
                todo.append(d)
    return kept


def iter_report_lines(scan: StorageScan, plan: GcPlan, *, quiet: bool = False) -> Iterator[str]:
    """The stdout of upstream 2.8.2, line by line (blob lines sorted; upstream prints them in map order)."""
    eligible = set(plan.manifests)
    for r in [] if quiet else scan.repos:
        yield r.name
        kept = plan.kept[r.name]
        for digest in r.revisions:
            if digest in kept:
                yield f"{r.name}: marking manifest {digest} "
                for ref in r.manifests[digest].references:
                    yield f"{r.name}: marking blob {ref}"
            elif (r.name, digest) in eligible:
                yield f"manifest eligible for deletion: {digest}"
    yield ""
    yield f"{len(plan.marked)} blobs marked, {len(plan.blobs)} blobs and {len(plan.manifests)} manifests eligible for deletion"
    for digest in plan.blobs:
        yield f"blob eligible for deletion: {digest}"


def apply_plan(
    layout: Layout, scan: StorageScan, plan: GcPlan, progress: Callable[[int], None] | None = None
) -> GcStats:
    """Delete what the plan says: untagged manifests first (as upstream), then blobs and their layer links."""
    stats = GcStats()
    for repo, digest in plan.manifests:
        remove_revision(layout, repo, digest)
        stats.manifests_deleted += 1
    links: dict[str, list[str]] = defaultdict(list)
    for r in scan.repos:
        for digest in r.layers:
            if digest in plan.blobs:
                links[digest].append(r.name)
    for digest, size in plan.blobs.items():
        stats.linked_from[digest] = links.get(digest, [])
        for repo in links.get(digest, ()):
            stats.layer_links_deleted += remove_layer_link(layout, repo, digest)
        rmtree(layout.blob_dir(digest))
        stats.blobs_deleted += 1
        stats.bytes_deleted += size
        if progress:
            progress(1)
    return stats
