"""Path scheme in both directions, and strict digest rules."""

import os

import pytest

from regidx.errors import InvalidDigest, StorageError
from regidx.layout import Kind, Layout, check_digest, is_repo_name, read_link

HEX = "a" * 64
D = f"sha256:{HEX}"


@pytest.fixture
def layout(tmp_path):
    return Layout(tmp_path)


def test_builders_and_classify_round_trip(layout):
    cases = [
        (os.path.join(layout.blob_dir(D), "data"), Kind.BLOB_DATA, "", D, ""),
        (os.path.join(layout.layer_link_dir("team/app", D), "link"), Kind.LAYER_LINK, "team/app", D, ""),
        (os.path.join(layout.revision_dir("a/b/c", D), "link"), Kind.REVISION_LINK, "a/b/c", D, ""),
        (layout.tag_current_link("app", "v1.0"), Kind.TAG_CURRENT_LINK, "app", "", "v1.0"),
        (os.path.join(layout.tag_index_dir("app", "latest", D), "link"), Kind.TAG_INDEX_LINK, "app", D, "latest"),
        (layout.tag_dir("app", "latest"), Kind.TAG_DIR, "app", "", "latest"),
    ]
    for path, kind, repo, digest, tag in cases:
        info = layout.classify(path)
        assert info is not None, path
        assert (info.kind, info.repo, info.digest, info.tag) == (kind, repo, digest, tag)
    assert layout.blob_data(D).endswith(f"blobs/sha256/aa/{HEX}/data")


def test_classify_uploads_and_repositories(layout):
    info = layout.classify(os.path.join(layout.uploads_dir("x/y"), "uuid-1", "startedat"))
    assert (info.kind, info.repo, info.upload) == (Kind.UPLOAD, "x/y", "uuid-1")
    assert layout.classify(os.path.join(layout.repositories, "x", "y")).kind is Kind.REPOSITORY


@pytest.mark.parametrize("rel", [
    "blobs/sha256/ab/" + HEX + "/data",  # prefix does not match the hex
    "blobs/md5/aa/" + HEX + "/data",
    "blobs/sha256/aa/" + HEX + "/other",
    "repositories/app/_layers/sha256/xyz/link",
    "repositories/UPPER/_layers/sha256/" + HEX + "/link",
    "repositories/_layers/sha256/" + HEX + "/link",  # no repository name
    "../etc/passwd",
])
def test_classify_rejects(layout, rel):
    assert layout.classify(os.path.join(layout.v2, rel)) is None


@pytest.mark.parametrize("bad", [
    D + "\n", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:" + "g" * 64, "", "md5:" + "a" * 32,
    "sha256:../../" + "a" * 58, "sha512:" + "a" * 64,
])
def test_invalid_digests(bad):
    with pytest.raises(InvalidDigest):
        check_digest(bad, "somewhere")


def test_valid_digests():
    assert check_digest(D, "x") == D
    assert check_digest("sha512:" + "0" * 128, "x")


def test_builders_refuse_invalid_input(layout):
    with pytest.raises(InvalidDigest):
        layout.blob_dir("sha256:../../etc")
    with pytest.raises(StorageError):
        layout.layer_link_dir("../escape", D)
    with pytest.raises(StorageError):
        layout.tag_dir("app", "../x")


def test_repo_names():
    assert is_repo_name("library/ubuntu")
    assert is_repo_name("a/b-c/d__e.f")
    assert not is_repo_name("Upper")
    assert not is_repo_name("a//b")
    assert not is_repo_name("a/../b")
    assert not is_repo_name("-a")


@pytest.mark.parametrize("content,ok", [
    (D, True), (D + "\n", False), ("", False), ("sha256:xyz", False), ("\xff", False),
])
def test_read_link(tmp_path, content, ok):
    p = tmp_path / "link"
    p.write_bytes(content.encode("latin-1"))
    if ok:
        assert read_link(str(p)) == D
    else:
        with pytest.raises(InvalidDigest, match=str(p)):
            read_link(str(p))
