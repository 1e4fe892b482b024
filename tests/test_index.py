"""The index's operations one by one: reference counts, candidates and their clocks, tags, pending data."""

from __future__ import annotations

import pytest

from regidx.index import LmdbIndex
from regidx.manifests import DOCKER_LIST, DOCKER_V2, Manifest
from regidx.records import (BlobAdded, BlobRemoved, LayerLinked, RevisionLinked, RevisionUnlinked, TagRemoved,
                            TagSet)

A, B, C, M, L = ("sha256:" + ch * 64 for ch in "abc0f")
IMAGE = Manifest(DOCKER_V2, (A, B))


@pytest.fixture
def index(tmp_path):
    with LmdbIndex(str(tmp_path / "idx")) as idx:
        yield idx


def apply(index, *records, now=100.0, loader=None):
    with index.write() as txn:
        for r in records:
            txn.apply(r, now, loader)


def candidates(index):
    with index.read() as txn:
        return dict(txn.iter_candidates(float("inf")))


def test_blob_becomes_candidate_when_its_last_reference_goes(index):
    apply(index, BlobAdded(A, 10, 0), BlobAdded(B, 20, 0), BlobAdded(M, 5, 0), now=10.0)
    assert candidates(index) == {A: 10.0, B: 10.0, M: 10.0}
    apply(index, RevisionLinked("app", M, IMAGE), RevisionLinked("other", M, IMAGE), now=20.0)
    assert candidates(index) == {}
    with index.read() as txn:
        assert txn.refcount(A) == 2 and txn.holders(A) == [("app", M), ("other", M)]
    apply(index, RevisionUnlinked("app", M), now=30.0)
    assert candidates(index) == {}
    apply(index, RevisionUnlinked("other", M), now=40.0)
    assert candidates(index) == {A: 40.0, B: 40.0, M: 40.0}


def test_operations_are_idempotent(index):
    records = [BlobAdded(A, 1, 0), BlobAdded(M, 1, 0), RevisionLinked("app", M, IMAGE), TagSet("app", "v1", M),
               LayerLinked("app", A)]
    apply(index, *records)
    with index.read() as txn:
        once = txn.dump()
    apply(index, *records, now=500.0)
    with index.read() as txn:
        assert txn.dump() == once


def test_a_new_layer_link_restarts_the_clock(index):
    apply(index, BlobAdded(A, 1, 0), now=10.0)
    apply(index, LayerLinked("app", A), now=50.0)
    assert candidates(index) == {A: 50.0}


def test_tags_count_and_untagged_set(index):
    apply(index, BlobAdded(M, 1, 0), RevisionLinked("app", M, IMAGE))
    with index.read() as txn:
        assert list(txn.iter_untagged()) == [("app", M, 100.0)]
    apply(index, TagSet("app", "v1", M), TagSet("app", "latest", M))
    with index.read() as txn:
        assert txn.tag_count("app", M) == 2 and list(txn.iter_untagged()) == []
    apply(index, TagRemoved("app", "v1"), now=200.0)
    with index.read() as txn:
        assert list(txn.iter_untagged()) == []
    apply(index, TagSet("app", "latest", L), now=300.0)  # retag away: M is untagged from now on
    with index.read() as txn:
        assert txn.tag_count("app", M) == 0 and list(txn.iter_untagged()) == [("app", M, 300.0)]


def test_revision_waits_for_its_data(index):
    """A link can arrive before the manifest's bytes can be read: it holds nothing until they can."""
    apply(index, BlobAdded(A, 1, 0), RevisionLinked("app", M, None), now=10.0)
    assert A in candidates(index)
    apply(index, BlobAdded(M, 1, 0), now=20.0, loader=lambda repo, digest: IMAGE)
    assert candidates(index) == {}
    with index.read() as txn:
        assert txn.manifest("app", M).media_type == DOCKER_V2


def test_losing_manifest_data_drops_its_references(index):
    apply(index, BlobAdded(A, 1, 0), BlobAdded(B, 1, 0), BlobAdded(M, 1, 0), RevisionLinked("app", M, IMAGE))
    apply(index, BlobRemoved(M), now=300.0)
    assert candidates(index) == {A: 300.0, B: 300.0}
    with index.read() as txn:
        assert txn.dump()["pending"] == {f"app@{M}"}


def test_index_manifests_reference_children(index):
    lst = Manifest(DOCKER_LIST, (M,))
    apply(index, BlobAdded(M, 1, 0), BlobAdded(L, 1, 0), RevisionLinked("app", L, lst))
    with index.read() as txn:
        assert txn.holders(M) == [("app", L)]


def test_map_grows_as_needed(tmp_path, monkeypatch):
    import regidx.index as index_module

    monkeypatch.setattr(index_module, "INITIAL_MAP_SIZE", 256 * 1024)
    with LmdbIndex(str(tmp_path / "small")) as idx:
        for batch in range(20):
            apply(idx, *[BlobAdded(f"sha256:{batch:08x}{i:056x}", i, 0) for i in range(500)])
        with idx.read() as txn:
            assert txn.counts()["blobs"] == 10_000
        assert idx.env.info()["map_size"] > 256 * 1024


def test_bulk_load_equals_applying_one_by_one(tmp_path):
    """A rebuild writes tables in one pass; applying the same records one at a time must give the same index."""
    from regidx.scan import iter_records, scan_storage
    from support.tree import Tree

    tree = Tree(tmp_path / "root")
    a = tree.image("app", "v1", layers=[b"x", b"y"])
    b = tree.image("app", None, layers=[b"y", b"z"], oci=True, subject=a.digest)
    tree.index("app", [a, b], tag="multi")
    tree.image("team/web", "v1", layers=[b"x"])
    tree.tag("team/web", "also", a.digest)
    tree.blob(b"orphan")
    tree.link(f"{tree.layout.revision_dir('app', 'sha256:' + '9' * 64)}/link", "sha256:" + "9" * 64)  # no data
    scan = scan_storage(tree.layout, read_tags=True, full=True, workers=1)
    records = list(iter_records(scan))
    with LmdbIndex(str(tmp_path / "bulk")) as bulk, LmdbIndex(str(tmp_path / "one")) as one:
        bulk.bulk_load(records, 100.0)
        apply(one, *records)
        with bulk.read() as t1, one.read() as t2:
            assert t1.dump() == t2.dump()
            assert dict(t1.iter_candidates(1e9)) == dict(t2.iter_candidates(1e9))
