"""Tests of the test harness itself (tests/support) against the real docker-registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from support.client import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryClient,
    RegistryError,
    layer_bytes,
    pull_and_verify,
    push_image,
    push_index,
    push_referrer,
    sha256_digest,
)
from support.registry import RegistryServer, parse_gc_output, run_upstream_gc

registry_test = pytest.mark.registry


def blob_dir(server: RegistryServer, digest: str) -> Path:
    hex_ = digest.removeprefix("sha256:")
    return server.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_


@registry_test
@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
@pytest.mark.parametrize("foreign", [False, True], ids=["", "foreign"])
def test_push_and_pull_image(client: RegistryClient, oci: bool, foreign: bool) -> None:
    layers = [layer_bytes("l1"), layer_bytes("l2", 5000)]
    img = push_image(client, "team/app", tag="v1", layers=layers, oci=oci, foreign_layer=foreign)
    assert img.media_type == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
    assert img.digest == sha256_digest(img.manifest)
    # The foreign layer is in the manifest but never fetched.
    assert len(img.foreign_digests) == int(foreign)
    pulled = pull_and_verify(client, "team/app", "v1")
    assert pulled == [img.digest, img.config_digest, *img.layer_digests]
    assert client.get_manifest("team/app", img.digest) == (img.manifest, img.media_type, img.digest)
    assert client.tags("team/app") == ["v1"]
    assert client.catalog() == ["team/app"]


@registry_test
@pytest.mark.parametrize("oci", [False, True], ids=["manifest-list", "oci-index"])
def test_index_with_two_children(client: RegistryClient, oci: bool) -> None:
    amd = push_image(client, "multi", layers=[layer_bytes("amd")], oci=oci)
    arm = push_image(client, "multi", layers=[layer_bytes("arm")], oci=oci)
    idx = push_index(client, "multi", tag="latest", children=[amd, arm], oci=oci)
    assert idx.media_type == (OCI_INDEX if oci else DOCKER_LIST)
    got = pull_and_verify(client, "multi", "latest")
    assert got == [idx.digest, amd.digest, *sorted(amd.blobs, key=got.index),
                   arm.digest, *sorted(arm.blobs, key=got.index)]
    assert client.tags("multi") == ["latest"]  # children pushed by digest: untagged


@registry_test
def test_index_children_must_be_in_the_repo(client: RegistryClient) -> None:
    elsewhere = push_image(client, "other", layers=[layer_bytes("x")])
    with pytest.raises(RegistryError) as e:
        push_index(client, "multi", children=[elsewhere])
    assert e.value.status == 400 and "MANIFEST_BLOB_UNKNOWN" in e.value.body


@registry_test
def test_referrer_with_subject_is_accepted(client: RegistryClient) -> None:
    img = push_image(client, "app", tag="v1", layers=[layer_bytes("l")])
    ref = push_referrer(client, "app", img)
    body, media_type, digest = client.get_manifest("app", ref.digest)
    # 2.8.2 stores and serves the bytes unchanged, unknown fields included.
    assert (body, media_type, digest) == (ref.manifest, OCI_MANIFEST, ref.digest)
    parsed = json.loads(body)
    assert parsed["subject"]["digest"] == img.digest
    assert parsed["artifactType"] == ref.artifact_type
    pulled = pull_and_verify(client, "app", ref.digest)
    assert pulled == [ref.digest, ref.config_digest, *ref.layer_digests]
    assert client.tags("app") == ["v1"]


@registry_test
def test_delete_manifest_then_404(client: RegistryClient) -> None:
    img = push_image(client, "app", tag="v1", layers=[layer_bytes("l")])
    client.delete_manifest("app", img.digest)
    assert client.head_manifest("app", img.digest) == 404
    with pytest.raises(RegistryError) as e:
        client.get_manifest("app", "v1")
    assert e.value.status == 404
    assert client.tags("app") == []
    # Blobs stay until GC.
    assert client.head_blob("app", img.layer_digests[0]) == 200


@registry_test
def test_upload_helpers(registry: RegistryServer, client: RegistryClient) -> None:
    data = layer_bytes("chunked", 200_000)
    digest = client.push_blob_chunked("a", data, chunk_size=64 * 1024)
    assert client.get_blob("a", digest) == data
    assert client.mount_blob("b", digest, from_repo="a") is True
    assert client.head_blob("b", digest) == 200
    assert client.mount_blob("b", sha256_digest(b"absent"), from_repo="a") is False
    uuid = client.start_upload("c", b"partial")
    upload = registry.root / "docker/registry/v2/repositories/c/_uploads" / uuid
    assert (upload / "data").read_bytes() == b"partial"
    assert (upload / "startedat").exists()
    client.delete_blob("b", digest)
    assert client.head_blob("b", digest) == 404
    assert client.catalog(page_size=1) == ["a", "b"]  # pages via Link; "c" has no _layers yet


@registry_test
def test_pull_and_verify_detects_missing_blob(
    registry: RegistryServer, client: RegistryClient
) -> None:
    img = push_image(client, "app", tag="v1", layers=[layer_bytes("l")])
    for p in blob_dir(registry, img.layer_digests[0]).rglob("*"):
        p.unlink()
    # Before a restart the blob-descriptor cache still answers 200, with an empty body.
    with pytest.raises(AssertionError, match=img.layer_digests[0]):
        pull_and_verify(client, "app", "v1")
    old_pid = registry.pid
    registry.restart()
    assert registry.pid != old_pid
    assert client.head_blob("app", img.layer_digests[0]) == 404
    with pytest.raises(AssertionError, match=img.layer_digests[0]):
        pull_and_verify(client, "app", "v1")


@registry_test
def test_stop_kills_process_and_start_failure_shows_log(
    registry: RegistryServer, tmp_path: Path
) -> None:
    clash = RegistryServer(tmp_path / "root2", workdir=tmp_path / "w2", port=registry.port)
    with pytest.raises(RuntimeError, match="address already in use"):
        clash.start()
    assert not clash.running
    pid = registry.pid
    assert pid is not None
    registry.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@registry_test
def test_upstream_dry_run_gc_reports_deleted_image(
    registry: RegistryServer, client: RegistryClient
) -> None:
    shared = layer_bytes("shared")
    keep = push_image(client, "app", tag="keep", layers=[shared, layer_bytes("keep")])
    doomed_layers = [shared, layer_bytes("d1"), layer_bytes("d2")]
    doomed = push_image(client, "app", tag="doomed", layers=doomed_layers)
    client.delete_manifest("app", doomed.digest)

    gc = run_upstream_gc(registry.config_path)
    expected = {doomed.digest, *doomed.blobs} - {sha256_digest(shared)}
    assert len(expected) == 4
    assert gc.eligible_blobs == expected
    assert gc.eligible_manifests == set()
    assert gc.marked == {keep.digest, *keep.blobs}
    assert (gc.marked_count, gc.blob_count, gc.manifest_count) == (len(gc.marked), 4, 0)
    # A dry run deletes nothing.
    assert all(blob_dir(registry, d).is_dir() for d in expected)
    pull_and_verify(client, "app", "keep")


@registry_test
def test_upstream_delete_untagged_reports_untagged_manifest(
    registry: RegistryServer, client: RegistryClient
) -> None:
    tagged = push_image(client, "app", tag="v1", layers=[layer_bytes("t")])
    untagged = push_image(client, "app", layers=[layer_bytes("u")])
    gc = run_upstream_gc(registry.config_path, delete_untagged=True)
    assert gc.eligible_manifests == {untagged.digest}
    assert gc.eligible_blobs == {untagged.digest, *untagged.blobs}
    assert gc.marked == {tagged.digest, *tagged.blobs}
    assert gc.manifest_count == 1


def test_parse_gc_output() -> None:
    m, a, b, c, d = (f"sha256:{ch * 64}" for ch in "mabcd")
    # Shape of real 2.8.2 stdout: repo line, marking lines (manifest ones end in a space),
    # eligible manifests (with -m), blank line, summary, eligible blobs; plus a v3-only line.
    text = (
        f"app\napp: marking manifest {m} \napp: marking blob {a}\napp: marking blob {b}\n"
        f"team/empty\nmanifest eligible for deletion: {c}\n"
        f"\n3 blobs marked, 2 blobs and 1 manifests eligible for deletion\n"
        f"blob eligible for deletion: {c}\nblob eligible for deletion: {d}\n"
        f"app: layer link eligible for deletion: {d}\n"
    )
    r = parse_gc_output(text)
    assert r.marked_manifests == {m} and r.marked_blobs == {a, b} and r.marked == {m, a, b}
    assert r.eligible_manifests == {c}
    assert r.eligible_blobs == {c, d}
    assert (r.marked_count, r.blob_count, r.manifest_count) == (3, 2, 1)
    empty = parse_gc_output("")
    assert empty.eligible_blobs == set() and empty.marked_count is None


@registry_test
def test_start_retries_when_auto_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from support import registry as reg

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real_free_port = reg._free_port
        monkeypatch.setattr(reg, "_free_port", lambda: next(ports, None) or real_free_port())
        with RegistryServer(tmp_path / "root", workdir=tmp_path) as server:
            assert server.port != taken.getsockname()[1]
            with RegistryClient(server.url) as c:
                assert c.catalog() == []
