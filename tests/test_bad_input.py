"""Bad input: one clear line naming the path, a non-zero exit, nothing deleted, never a traceback."""

import os
import shutil
import subprocess
import sys

import pytest

from support.tree import Tree

HEX = "b" * 64


@pytest.fixture
def tree(tmp_path):
    t = Tree(tmp_path / "root")
    t.image("app", "v1")
    t.blob(b"garbage that a real run would delete")
    return t


def run(tree, *args, drop_privileges=False):
    cmd = [sys.executable, "-m", "regidx.cli", "garbage-collect", *args, str(tree.config)]
    if drop_privileges and os.geteuid() == 0:
        # Root reads everything; drop the capabilities that bypass file permissions.
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True)


def assert_refused(tree, path_fragment, *, drop_privileges=False):
    before = tree.blobs_on_disk()
    result = run(tree, drop_privileges=drop_privileges)  # a real run, not a dry run
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("regidx: error: ") and path_fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing reported as marked or deleted
    assert tree.blobs_on_disk() == before


def revision_link(tree, repo="app"):
    rev = os.path.join(tree.layout.repositories, repo, "_manifests", "revisions", "sha256")
    return os.path.join(rev, os.listdir(rev)[0], "link")


@pytest.mark.parametrize("content", [
    None,  # the valid digest plus a trailing newline
    "sha256:" + "z" * 64,
    "sha256:" + "a" * 63,
    "",
    "sha1:" + "a" * 40,
])
def test_bad_revision_link(tree, content):
    link = revision_link(tree)
    with open(link) as f:
        good = f.read()
    with open(link, "w") as f:
        f.write(good + "\n" if content is None else content)
    assert_refused(tree, link)


def test_bad_tag_link_with_delete_untagged(tree):
    link = tree.layout.tag_current_link("app", "v1")
    with open(link, "a") as f:
        f.write("\n")
    before = tree.blobs_on_disk()
    result = run(tree, "-m")
    assert result.returncode == 2 and link in result.stderr and tree.blobs_on_disk() == before


def test_revision_link_naming_another_digest(tree):
    link = revision_link(tree)
    with open(link, "w") as f:
        f.write("sha256:" + HEX)
    assert_refused(tree, link)


def test_malformed_manifest(tree):
    tree.manifest("app", b'{"schemaVersion": 2, "mediaType": ')
    assert_refused(tree, "not valid JSON")


def test_unknown_media_type(tree):
    digest = tree.manifest("app", b'{"schemaVersion": 2, "mediaType": "application/x-made-up"}')
    assert_refused(tree, digest)


def test_invalid_blob_directory(tree):
    bad = os.path.join(tree.layout.blobs, "sha256", "zz", "z" * 64)
    os.makedirs(bad)
    open(os.path.join(bad, "data"), "w").close()
    assert_refused(tree, bad)


def test_symlinked_repository_is_refused_and_outside_untouched(tree, tmp_path):
    outside = tmp_path / "outside"
    Tree(outside).image("evil", "v1")
    os.symlink(outside / "docker/registry/v2/repositories/evil", os.path.join(tree.layout.repositories, "evil"))
    outside_files = sorted(p for p in outside.rglob("*"))
    assert_refused(tree, "symbolic link")
    assert sorted(p for p in outside.rglob("*")) == outside_files


def test_symlinked_blob_data_is_refused(tree, tmp_path):
    target = tmp_path / "secret"
    target.write_bytes(b"outside the root")
    digest = "sha256:" + HEX
    blob_dir = tree.layout.blob_dir(digest)
    os.makedirs(blob_dir)
    os.symlink(target, os.path.join(blob_dir, "data"))
    assert_refused(tree, blob_dir)
    assert target.read_bytes() == b"outside the root"


def test_unreadable_link(tree):
    link = revision_link(tree)
    os.chmod(link, 0)
    assert_refused(tree, link, drop_privileges=True)


def test_unreadable_directory(tree):
    layers = os.path.join(tree.layout.repositories, "app", "_layers", "sha256")
    os.chmod(layers, 0)
    try:
        assert_refused(tree, layers, drop_privileges=True)
    finally:
        os.chmod(layers, 0o755)


def test_link_that_is_a_directory(tree):
    link = revision_link(tree)
    os.unlink(link)
    os.mkdir(link)
    assert_refused(tree, link)


def test_missing_root_directory(tree):
    shutil.rmtree(tree.root / "docker")
    os.rmdir(tree.root)
    result = run(tree)
    assert result.returncode == 2
    assert result.stderr.strip() == f"regidx: error: {tree.root}: storage root directory does not exist"


def test_missing_config(tmp_path):
    result = subprocess.run([sys.executable, "-m", "regidx.cli", "garbage-collect", str(tmp_path / "c.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "c.yml: config file not found" in result.stderr


def test_revision_with_missing_data_is_skipped_like_upstream(tree):
    img = tree.image("app", "v2", seed="x")
    os.unlink(tree.layout.blob_data(img.digest))
    result = run(tree, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"marking manifest {img.digest}" not in result.stdout
    for d in img.blobs:
        assert f"blob eligible for deletion: {d}" in result.stdout
