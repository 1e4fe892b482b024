"""Stop-the-world mark and sweep on trees written directly (no server): semantics and deletion."""

import os

import pytest

from regidx.gc import apply_plan, iter_report_lines, plan_gc
from regidx.scan import find_repositories, scan_storage
from support.tree import Tree


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path / "root")


def plan(tree, m=False):
    scan = scan_storage(tree.layout, read_tags=m, workers=1)
    return scan, plan_gc(tree.layout, scan, delete_untagged=m)


def test_plain_mode_keeps_every_revision(tree):
    kept = tree.image("app", "v1")
    untagged = tree.image("app", None, seed="old")
    gone = tree.image("app", "v2", seed="gone")
    tree.delete_manifest("app", gone.digest)
    orphan = tree.blob(b"never referenced")
    _, p = plan(tree)
    assert set(p.blobs) == {orphan, gone.digest, *gone.blobs}
    assert p.manifests == []
    assert {kept.digest, *kept.blobs, untagged.digest, *untagged.blobs} <= p.marked


def test_delete_untagged_keeps_index_children_and_referrers(tree):
    a = tree.image("multi", None, seed="amd64")
    b = tree.image("multi", None, seed="arm64")
    idx = tree.index("multi", [a, b], tag="latest")
    sig = tree.image("multi", None, oci=True, subject=idx.digest, seed="sig")
    sig_of_sig = tree.image("multi", None, oci=True, subject=sig.digest, seed="sigsig")
    old = tree.image("multi", None, seed="old")
    _, p = plan(tree, m=True)
    assert p.manifests == [("multi", old.digest)]
    assert set(p.blobs) == {old.digest, *old.blobs}
    for img in (a, b, idx, sig, sig_of_sig):
        assert img.digest in p.marked and set(img.blobs) <= p.marked


def test_delete_untagged_keeps_a_manifest_marked_by_another_repo(tree):
    shared = tree.image("one", "v1", seed="s")
    # The same manifest, untagged in another repository (a cross-repo mount, then a push by digest).
    for d in shared.blobs:
        tree.layer_link("two", d)
    tree.link(os.path.join(tree.layout.revision_dir("two", shared.digest), "link"), shared.digest)
    _, p = plan(tree, m=True)
    assert ("two", shared.digest) not in p.manifests


def test_nested_repositories_and_both_rules(tree):
    tree.image("a", "v1")
    tree.image("a/b", "v1")
    tree.image("team/x/y", "v1")
    # A v3-only repository: _manifests but no _layers.
    os.makedirs(tree.layout.revision_dir("v3only", "sha256:" + "1" * 64))
    assert find_repositories(tree.layout) == ["a", "a/b", "team/x/y", "v3only"]


def test_revision_with_missing_data_is_skipped(tree):
    img = tree.image("app", "v1")
    os.unlink(tree.layout.blob_data(img.digest))
    scan, p = plan(tree)
    assert scan.repos[0].revisions == [img.digest]
    assert img.digest not in p.marked and set(img.blobs) <= set(p.blobs)


def test_report_lines_match_upstream_shape(tree):
    img = tree.image("app", "v1")
    orphan = tree.blob(b"x")
    scan, p = plan(tree)
    lines = list(iter_report_lines(scan, p))
    assert lines[:2] == ["app", f"app: marking manifest {img.digest} "]
    assert lines[2:4] == [f"app: marking blob {d}" for d in img.blobs]
    assert lines[-3:] == ["", "3 blobs marked, 1 blobs and 0 manifests eligible for deletion",
                          f"blob eligible for deletion: {orphan}"]


def test_apply_deletes_blobs_links_and_untagged_manifests(tree):
    keep = tree.image("app", "v1", layers=[b"shared"])
    old = tree.image("app", "v0", layers=[b"shared", b"only-old"])
    tree.tag("app", "v0", keep.digest)  # retag: v0 now points at keep; old is untagged
    scan, p = plan(tree, m=True)
    stats = apply_plan(tree.layout, scan, p)
    assert p.manifests == [("app", old.digest)]
    assert stats.manifests_deleted == 1 and stats.blobs_deleted == 3  # old manifest, its config, only-old
    assert tree.blobs_on_disk() == {keep.digest, *keep.blobs}
    assert not os.path.exists(tree.layout.revision_dir("app", old.digest))
    assert not os.path.exists(tree.layout.tag_index_dir("app", "v0", old.digest))
    assert os.path.exists(tree.layout.tag_index_dir("app", "v0", keep.digest))
    only_old = old.blobs[2]
    assert not os.path.exists(tree.layout.layer_link_dir("app", only_old))
    assert os.path.exists(os.path.join(tree.layout.layer_link_dir("app", keep.blobs[1]), "link"))
    # A second run finds nothing more.
    _, again = plan(tree, m=True)
    assert again.blobs == {} and again.manifests == []
