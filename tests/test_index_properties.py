"""The invariant that matters most: the index kept up incrementally equals one rebuilt from scratch,
after any sequence of operations; and a --grace 0 sweep removes what garbage-collect would."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from regidx.gc import plan_gc
from regidx.rebuild import index_from_scan
from regidx.records import (BlobAdded, BlobRemoved, LayerLinked, LayerUnlinked, RevisionLinked, RevisionUnlinked,
                            TagRemoved, TagSet, UploadStarted)
from regidx.scan import read_manifest, scan_storage
from regidx.sweep import sweep
from regidx.trash import Trash
from support.tree import Tree, digest_of

REPOS = st.sampled_from(["app", "team/web", "team/web/api"])
TAGS = st.sampled_from(["latest", "v1", "v2"])
LAYERS = st.lists(st.sampled_from([b"base", b"libc", b"python", b"app-1", b"app-2", b"data"]),
                  min_size=1, max_size=3, unique=True)


class IndexMachine(RuleBasedStateMachine):
    """Operations on a real storage tree, each also fed to the index as the records a watcher would see."""

    @initialize()
    def setup(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="regidx-prop-"))
        self.tree = Tree(self.tmp / "root")
        self.layout = self.tree.layout
        self.index = index_from_scan(str(self.tmp / "index"), self.layout, scan(self.layout), time.time())
        self.seq = 0

    def teardown(self) -> None:
        if hasattr(self, "index"):
            self.index.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # helpers -------------------------------------------------------------------------------------

    def feed(self, *records) -> None:
        loader = lambda repo, digest: read_manifest(self.layout, repo, digest)  # noqa: E731
        with self.index.write() as txn:
            for record in records:
                txn.apply(record, time.time(), loader)

    def blob_added(self, digest: str) -> BlobAdded:
        st_ = os.stat(self.layout.blob_data(digest))
        return BlobAdded(digest, st_.st_size, st_.st_mtime_ns)

    def revisions(self, repo: str) -> list[str]:
        base = os.path.join(self.layout.repositories, repo, "_manifests", "revisions", "sha256")
        if not os.path.isdir(base):
            return []
        return sorted(f"sha256:{h}" for h in os.listdir(base) if os.path.exists(os.path.join(base, h, "link")))

    def live(self, repo: str) -> list[str]:
        return [d for d in self.revisions(repo) if os.path.exists(self.layout.blob_data(d))]

    def push_records(self, repo: str, digests_before: set[str], manifest: str, blobs: tuple[str, ...],
                     tag: str | None) -> None:
        """Blob data first, then layer links, then the revision, then the tag: the registry's write order."""
        records = [self.blob_added(d) for d in (*blobs, manifest) if d not in digests_before]
        records += [LayerLinked(repo, d) for d in blobs]
        records.append(RevisionLinked(repo, manifest, read_manifest(self.layout, repo, manifest)))
        if tag:
            records.append(TagSet(repo, tag, manifest))
        self.feed(*records)

    # operations ------------------------------------------------------------------------------------

    @rule(repo=REPOS, tag=st.none() | TAGS, layers=LAYERS, oci=st.booleans(), referrer=st.booleans())
    def push_image(self, repo: str, tag: str | None, layers: list[bytes], oci: bool, referrer: bool) -> None:
        before = self.tree.blobs_on_disk()
        live = self.live(repo)
        subject = live[0] if referrer and live else None
        self.seq += 1
        img = self.tree.image(repo, tag, layers=layers, oci=oci or bool(subject), subject=subject, seed=str(self.seq % 4))
        self.push_records(repo, before, img.digest, img.blobs, tag)

    @precondition(lambda self: any(self.live(r) for r in ("app", "team/web", "team/web/api")))
    @rule(repo=REPOS, tag=st.none() | TAGS, data=st.data())
    def push_index(self, repo: str, tag: str | None, data: st.DataObject) -> None:
        live = self.live(repo)
        if not live:
            return
        children = data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=3, unique=True))
        before = self.tree.blobs_on_disk()
        img = self.tree.index(repo, [_Child(d) for d in children], tag=tag)
        self.push_records(repo, before, img.digest, (), tag)

    @rule(repo=REPOS, tag=TAGS, data=st.data())
    def retag(self, repo: str, tag: str, data: st.DataObject) -> None:
        live = self.revisions(repo)
        if live:
            digest = data.draw(st.sampled_from(live))
            self.tree.tag(repo, tag, digest)
            self.feed(TagSet(repo, tag, digest))

    @rule(repo=REPOS, tag=TAGS)
    def untag(self, repo: str, tag: str) -> None:
        path = self.layout.tag_dir(repo, tag)
        if os.path.isdir(path):
            shutil.rmtree(path)
            self.feed(TagRemoved(repo, tag))

    @rule(repo=REPOS, data=st.data())
    def delete_manifest(self, repo: str, data: st.DataObject) -> None:
        revisions = self.revisions(repo)
        if not revisions:
            return
        digest = data.draw(st.sampled_from(revisions))
        tags_dir = self.layout.tags_dir(repo)
        doomed = [t for t in (os.listdir(tags_dir) if os.path.isdir(tags_dir) else [])
                  if Path(self.layout.tag_current_link(repo, t)).exists()
                  and Path(self.layout.tag_current_link(repo, t)).read_text() == digest]
        self.tree.delete_manifest(repo, digest)
        self.feed(RevisionUnlinked(repo, digest), *[TagRemoved(repo, t) for t in doomed])

    @rule(repo=REPOS, data=st.data(), whole_dir=st.booleans())
    def delete_layer_link(self, repo: str, data: st.DataObject, whole_dir: bool) -> None:
        """The API's blob delete removes only the link file (the link's directory, which is what the
        index tracks, stays); removing the directory too is what a sweep or a person does."""
        base = os.path.join(self.layout.repositories, repo, "_layers", "sha256")
        links = sorted(os.listdir(base)) if os.path.isdir(base) else []
        if not links:
            return
        digest = "sha256:" + data.draw(st.sampled_from(links))
        if whole_dir:
            shutil.rmtree(os.path.join(base, digest[7:]))
            self.feed(LayerUnlinked(repo, digest))
        elif os.path.exists(os.path.join(base, digest[7:], "link")):
            os.unlink(os.path.join(base, digest[7:], "link"))

    @rule(content=st.sampled_from([b"orphan-1", b"orphan-2", b"base"]))
    def orphan_blob(self, content: bytes) -> None:
        if digest_of(content) not in self.tree.blobs_on_disk():
            self.feed(self.blob_added(self.tree.blob(content)))

    @rule(repo=REPOS)
    def orphan_upload(self, repo: str) -> None:
        self.seq += 1
        path = os.path.join(self.layout.uploads_dir(repo), f"uuid-{self.seq}")
        os.makedirs(path)
        Path(path, "startedat").write_text("2026-01-02T03:04:05Z")
        self.feed(UploadStarted(repo, f"uuid-{self.seq}", 1767323045.0))

    @rule(repo=REPOS, data=st.data())
    def lose_manifest_data(self, repo: str, data: st.DataObject) -> None:
        """Manifest bytes deleted by hand: upstream then skips the revision, and so must the index."""
        live = self.live(repo)
        if live:
            digest = data.draw(st.sampled_from(live))
            shutil.rmtree(self.layout.blob_dir(digest))
            self.feed(BlobRemoved(digest))

    @rule(delete_untagged=st.booleans(), trash=st.booleans())
    def sweep_matches_garbage_collect(self, delete_untagged: bool, trash: bool) -> None:
        expected = plan_gc(self.layout, scan_storage(self.layout, read_tags=delete_untagged, workers=1),
                           delete_untagged=delete_untagged)
        result = sweep(self.index, self.layout, Trash(str(self.tmp / "trash")) if trash else None,
                       dry_run=False, grace=0, delete_untagged=delete_untagged, now=time.time() + 1)
        assert {d for d, _ in result.blobs} == set(expected.blobs)
        assert set(result.manifests) == set(expected.manifests)
        assert not self.tree.blobs_on_disk() & set(expected.blobs)

    @rule()
    def rebuild(self) -> None:
        self.index.close()
        shutil.rmtree(self.tmp / "index")
        self.index = index_from_scan(str(self.tmp / "index"), self.layout, scan(self.layout), time.time())

    # the invariant -----------------------------------------------------------------------------------

    @invariant()
    def index_equals_rebuild(self) -> None:
        if not hasattr(self, "index"):
            return
        with tempfile.TemporaryDirectory(dir=self.tmp) as fresh_dir:
            with index_from_scan(fresh_dir, self.layout, scan(self.layout), time.time()) as fresh:
                with fresh.read() as txn:
                    expected = txn.dump()
        with self.index.read() as txn:
            actual = txn.dump()
        for table in expected:
            assert actual[table] == expected[table], table


class _Child:
    """Just enough of an image for Tree.index: a digest."""

    def __init__(self, digest: str) -> None:
        self.digest = digest


def scan(layout, read_tags: bool = True):
    return scan_storage(layout, read_tags=read_tags, full=True, workers=1)


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(
    max_examples=int(os.environ.get("REGIDX_PROPERTY_EXAMPLES", "40")), stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
