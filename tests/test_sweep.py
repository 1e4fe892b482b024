"""index rebuild / verify and gc sweep / restore / purge / uploads, through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from regidx.errors import IndexError_
from regidx.indexdir import IndexDir, check_local_filesystem, default_index_dir
from regidx.layout import Layout
from regidx.trash import Trash, default_trash_dir
from support.tree import Tree


def regidx(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "regidx.cli", *args], capture_output=True, text=True)
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


@pytest.fixture
def tree(tmp_path):
    t = Tree(tmp_path / "root")
    t.keep = t.image("app", "v1", layers=[b"shared", b"keep"])
    t.old = t.image("app", "v0", layers=[b"shared", b"old-only"])
    t.tag("app", "v0", t.keep.digest)  # retag: the old image is untagged now
    t.gone = t.image("team/web", "latest", layers=[b"gone"])
    t.delete_manifest("team/web", t.gone.digest)
    t.orphan = t.blob(b"orphan")
    return t


def sweep_json(tree, *args, check=0):
    out = regidx("gc", "sweep", str(tree.config), "--json", *args, check=check)
    return json.loads(out.stdout) if check == 0 else out


def test_rebuild_sweep_restore_round_trip(tree):
    regidx("index", "rebuild", str(tree.config))
    plain = {tree.orphan, tree.gone.digest, *tree.gone.blobs}
    dry = sweep_json(tree, "--dry-run", "--grace", "0")
    assert {b["digest"] for b in dry["blobs"]} == plain and dry["dry_run"] and dry["manifests"] == []
    assert tree.blobs_on_disk() >= plain
    untagged = sweep_json(tree, "--dry-run", "--grace", "0", "-m")
    assert {(m["repository"], m["digest"]) for m in untagged["manifests"]} == {("app", tree.old.digest)}
    assert {b["digest"] for b in untagged["blobs"]} == plain | {tree.old.digest, tree.old.blobs[0], tree.old.blobs[2]}
    # The same answer as the stop-the-world collector.
    gc = json.loads(regidx("garbage-collect", "--dry-run", "-m", "--json", str(tree.config)).stdout)
    assert {b["digest"] for b in gc["blobs"]} == {b["digest"] for b in untagged["blobs"]}

    real = sweep_json(tree, "--grace", "0", "-m")
    assert {b["digest"] for b in real["blobs"]} == {b["digest"] for b in untagged["blobs"]}
    assert not tree.blobs_on_disk() & {b["digest"] for b in real["blobs"]}
    assert real["layer_links"] == 4  # old config and old-only in app, gone's config and layer in team/web
    regidx("index", "verify", str(tree.config))
    trash = Trash(default_trash_dir(tree.root))
    assert {e.digest for e in trash.entries()} == {b["digest"] for b in real["blobs"]}

    out = regidx("gc", "restore", str(tree.config), tree.old.blobs[2]).stdout
    assert out.strip() == f"restored: {tree.old.blobs[2]}"
    assert os.path.exists(os.path.join(tree.layout.layer_link_dir("app", tree.old.blobs[2]), "link"))
    regidx("index", "verify", str(tree.config))
    regidx("gc", "restore", str(tree.config), "--all")
    assert tree.blobs_on_disk() >= plain
    regidx("index", "verify", str(tree.config))
    assert list(trash.entries()) == []


def test_offline_sweep_refuses_after_an_addition(tree):
    regidx("index", "rebuild", str(tree.config))
    time.sleep(0.05)
    tree.image("app", None, layers=[b"orphan"], seed="new")  # a new revision now references the orphan
    before = tree.blobs_on_disk()
    out = regidx("gc", "sweep", "--grace", "0", str(tree.config), check=2)
    assert "changed since the last full scan" in out.stderr and "index rebuild" in out.stderr
    assert tree.blobs_on_disk() == before
    regidx("index", "rebuild", str(tree.config))
    swept = sweep_json(tree, "--grace", "0")
    assert tree.orphan not in {b["digest"] for b in swept["blobs"]}


def test_relinking_a_deleted_manifest_is_seen(tree):
    """The API leaves the revision directory when it deletes a manifest; a re-push writes into it."""
    regidx("index", "rebuild", str(tree.config))
    time.sleep(0.05)
    tree.link(os.path.join(tree.layout.revision_dir("team/web", tree.gone.digest), "link"), tree.gone.digest)
    regidx("gc", "sweep", "--dry-run", "--grace", "0", str(tree.config), check=2)


def test_retag_in_place_blocks_only_delete_untagged(tree):
    regidx("index", "rebuild", str(tree.config))
    time.sleep(0.05)
    with open(tree.layout.tag_current_link("app", "v0"), "w") as f:  # 2.8 rewrites the link in place
        f.write(tree.old.digest)
    sweep_json(tree, "--dry-run", "--grace", "0")
    out = regidx("gc", "sweep", "--dry-run", "--grace", "0", "-m", str(tree.config), check=2)
    assert "current" in out.stderr


def test_grace_period(tree):
    from regidx.sweep import sweep

    regidx("index", "rebuild", str(tree.config))
    assert sweep_json(tree, "--dry-run", "--grace", "1h")["blobs"] == []  # clocks start at the first scan
    index = IndexDir(default_index_dir(tree.root)).open()
    with index:
        later = sweep(index, tree.layout, None, dry_run=True, grace=3600, delete_untagged=False,
                      now=time.time() + 7200)
        assert {d for d, _ in later.blobs} == {tree.orphan, tree.gone.digest, *tree.gone.blobs}
        # A blob whose data file is younger than the grace stays, whatever its clock says: the
        # plan trusts the mtime the index recorded, the removal looks at the file again.
        os.utime(tree.layout.blob_data(tree.orphan), (time.time() + 5000, time.time() + 5000))
        real = sweep(index, tree.layout, None, dry_run=False, grace=3600, delete_untagged=False,
                     now=time.time() + 7200)
        assert tree.orphan in {d for d, _ in real.skipped} and tree.orphan not in {d for d, _ in real.blobs}
        assert os.path.exists(tree.layout.blob_data(tree.orphan))
        assert {d for d, _ in real.blobs} == {tree.gone.digest, *tree.gone.blobs}


def test_rebuild_keeps_the_clocks_of_a_trusted_index(tree):
    regidx("index", "rebuild", str(tree.config))
    idx_dir = IndexDir(default_index_dir(tree.root))
    with idx_dir.open() as idx, idx.read() as txn:
        first = dict(txn.iter_candidates(float("inf")))
    regidx("index", "rebuild", str(tree.config))
    with idx_dir.open() as idx, idx.read() as txn:
        assert dict(txn.iter_candidates(float("inf"))) == first
    assert len([n for n in os.listdir(idx_dir.path) if n.startswith("gen-")]) == 1


def test_verify_reports_drift_then_rebuild_fixes_it(tree):
    regidx("index", "rebuild", str(tree.config))
    regidx("index", "verify", str(tree.config))
    extra = tree.blob(b"copied in by hand")
    os.unlink(os.path.join(tree.layout.revision_dir("app", tree.keep.digest), "link"))
    out = regidx("index", "verify", str(tree.config), check=1).stdout
    assert f"blob missing from index: {extra}" in out
    assert f"stale manifest in index: app@{tree.keep.digest}" in out
    assert "wrong reference count" in out
    found = json.loads(regidx("index", "verify", "--json", str(tree.config), check=1).stdout)
    assert {"kind": "blob missing from index", "key": extra, "index": None, "storage": len(b"copied in by hand")} in found
    regidx("index", "rebuild", str(tree.config))
    regidx("index", "verify", str(tree.config))


def test_crash_during_rebuild_keeps_the_old_index(tree, monkeypatch):
    from regidx import rebuild as rebuild_module

    regidx("index", "rebuild", str(tree.config))
    idx_dir = IndexDir(default_index_dir(tree.root))
    before = idx_dir.current()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed halfway through writing the new generation

    monkeypatch.setattr(rebuild_module, "build_index", crash)
    with pytest.raises(KeyboardInterrupt):
        rebuild_module.rebuild_index(Layout(tree.root), idx_dir)
    assert idx_dir.current() == before
    assert [n for n in os.listdir(idx_dir.path) if n.startswith("gen-")] == [os.path.basename(before)]
    regidx("index", "verify", str(tree.config))


def test_one_writer_at_a_time(tree):
    regidx("index", "rebuild", str(tree.config))
    with IndexDir(default_index_dir(tree.root)).lock("test"):
        out = regidx("gc", "sweep", "--grace", "0", str(tree.config), check=2)
    assert "in use by pid" in out.stderr and "(test)" in out.stderr


def test_refuses_network_filesystems(tmp_path, monkeypatch):
    import regidx.indexdir as indexdir

    monkeypatch.setattr(indexdir, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(IndexError_, match="nfs4 filesystem"):
        check_local_filesystem(str(tmp_path))
    assert indexdir.filesystem_type.__name__ == "<lambda>"


def test_filesystem_type_reads_mountinfo(tmp_path):
    from regidx.indexdir import filesystem_type

    assert filesystem_type(str(tmp_path)) not in {"", "nfs", "nfs4"}


def test_without_index_sweep_says_what_to_run(tree):
    out = regidx("gc", "sweep", str(tree.config), check=2)
    assert "index rebuild" in out.stderr


def test_untrusted_index_is_refused(tree):
    regidx("index", "rebuild", str(tree.config))
    with IndexDir(default_index_dir(tree.root)).open() as idx, idx.write() as txn:
        txn.set_meta("state", "untrusted: missed events")
    out = regidx("gc", "sweep", "--grace", "0", str(tree.config), check=2)
    assert "not trusted (untrusted: missed events)" in out.stderr


def test_interrupted_sweep_is_finished_by_the_next(tree):
    regidx("index", "rebuild", str(tree.config))
    # As if a sweep had removed the blob and died before its index transaction committed.
    import shutil

    shutil.rmtree(tree.layout.blob_dir(tree.orphan))
    swept = sweep_json(tree, "--grace", "0")
    assert tree.orphan in {b["digest"] for b in swept["blobs"]}
    regidx("index", "verify", str(tree.config))


def test_stale_uploads_and_empty_repositories(tree):
    uploads = tree.layout.uploads_dir("app")
    for name, started in (("old", "2020-01-01T00:00:00Z"), ("new", None), ("nostamp", "")):
        os.makedirs(os.path.join(uploads, name))
        if started is not None:
            with open(os.path.join(uploads, name, "startedat"), "w") as f:
                f.write(started or "garbage")
    os.utime(os.path.join(uploads, "nostamp"), (0, 0))
    with open(os.path.join(uploads, "new", "startedat"), "w") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    regidx("index", "rebuild", str(tree.config))
    # team/web has nothing left but empty directories once its deleted image's layer links go.
    sweep_json(tree, "--grace", "0")
    out = regidx("gc", "uploads", "--dry-run", str(tree.config)).stdout
    assert "upload would remove: app old" in out and "app nostamp" in out and "app new" not in out
    assert "empty repository: team/web" in out
    regidx("gc", "uploads", "--prune-empty-repos", str(tree.config))
    assert sorted(os.listdir(uploads)) == ["new"]
    assert not os.path.exists(os.path.join(tree.layout.repositories, "team"))
    regidx("index", "verify", str(tree.config))
    sweep_json(tree, "--dry-run", "--grace", "0")  # the offline check still passes after our own changes


def test_purge(tree):
    regidx("index", "rebuild", str(tree.config))
    sweep_json(tree, "--grace", "0")
    assert "would purge 0 trash entries" in regidx("gc", "purge", "--dry-run", str(tree.config)).stdout
    out = regidx("gc", "purge", "--older-than", "0", str(tree.config)).stdout
    assert out.startswith("purged 4 trash entries")
    assert list(Trash(default_trash_dir(tree.root)).entries()) == []


def test_durations_are_validated(tree):
    out = regidx("gc", "sweep", "--grace", "soon", str(tree.config), check=2)
    assert "is not a duration" in out.stderr
