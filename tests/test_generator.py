"""tools/gen_tree.py writes the layout a real 2.8.2 registry writes, and the garbage 2.8.2's GC finds."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

REGISTRY = shutil.which("docker-registry")
pytestmark = [pytest.mark.registry,
              pytest.mark.skipif(REGISTRY is None, reason="needs docker-registry (Debian package)")]

_spec = importlib.util.spec_from_file_location("gen_tree", Path(__file__).parents[1] / "tools/gen_tree.py")
gen_tree = importlib.util.module_from_spec(_spec)
sys.modules["gen_tree"] = gen_tree
_spec.loader.exec_module(gen_tree)

HEX = re.compile(r"[0-9a-f]{64}")
GC_LINE = re.compile(r"^blob eligible for deletion: (sha256:[0-9a-f]{64})$", re.M)
REPO = "team-01/app-01"


def shape(rel: str) -> str:
    """A path with every name the registry makes up (repo, tag, digest, uuid, offset) replaced."""
    parts = rel.split("/")
    if parts[0] == "blobs" and len(parts) > 2:
        parts[2] = "<xx>"
    elif parts[0] == "repositories":
        # the repository name is every component before the first _-prefixed one
        k = next((i for i, p in enumerate(parts) if p.startswith("_")), len(parts))
        parts = parts[:1] + (["<repo>"] if k > 1 else []) + parts[k:]
        if parts[2:4] == ["_manifests", "tags"] and len(parts) > 4:
            parts[4] = "<tag>"
        if parts[2:3] == ["_uploads"] and len(parts) > 3:
            parts[3] = "<uuid>"
        if parts[4:6] == ["hashstates", "sha256"] and len(parts) > 6:
            parts[6] = "<offset>"
    return "/".join(HEX.sub("<hex>", p) for p in parts)


def tree_shapes(v2: Path) -> set[tuple[str, str]]:
    shapes = set()
    for dirpath, dirnames, filenames in os.walk(v2):
        for kind, names in (("dir", dirnames), ("file", filenames)):
            for name in names:
                shapes.add((kind, shape(os.path.relpath(os.path.join(dirpath, name), v2))))
    return shapes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(client: httpx.Client, data: bytes) -> dict:
    location = client.post(f"/v2/{REPO}/blobs/uploads/").raise_for_status().headers["location"]
    url = httpx.URL(location).copy_merge_params({"digest": sha256(data)})  # keep the _state parameter
    client.put(url, content=data, headers={"content-type": "application/octet-stream"}).raise_for_status()
    return {"size": len(data), "digest": sha256(data)}


def push_image(client: httpx.Client, tag: str, salt: bytes) -> tuple[str, list[str]]:
    layers = [push_blob(client, salt + os.urandom(300)), push_blob(client, salt + os.urandom(700))]
    config = json.dumps({"architecture": "amd64", "os": "linux", "salt": salt.hex(),
                         "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": gen_tree.DOCKER_MANIFEST,
        "config": {"mediaType": gen_tree.DOCKER_CONFIG, **push_blob(client, config)},
        "layers": [{"mediaType": gen_tree.DOCKER_LAYER, **d} for d in layers]}).encode()
    client.put(f"/v2/{REPO}/manifests/{tag}", content=manifest,
               headers={"content-type": gen_tree.DOCKER_MANIFEST}).raise_for_status()
    return sha256(manifest), [d["digest"] for d in layers]


@pytest.fixture
def real_tree(tmp_path: Path) -> Path:
    """Push, move a tag, delete a manifest and a blob, leave two uploads unfinished, through 2.8.2."""
    root, port = tmp_path / "real", free_port()
    config = tmp_path / "real.yml"
    config.write_text(gen_tree.registry_config(root).replace("127.0.0.1:5000", f"127.0.0.1:{port}"))
    server = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.get("/v2/").raise_for_status()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.05)
            push_image(client, "v1", b"a")
            push_image(client, "v1", b"b")  # the tag moves: its index keeps both
            gone, layers = push_image(client, "old", b"c")
            client.delete(f"/v2/{REPO}/manifests/{gone}").raise_for_status()
            client.delete(f"/v2/{REPO}/blobs/{layers[0]}").raise_for_status()
            client.post(f"/v2/{REPO}/blobs/uploads/").raise_for_status()
            location = client.post(f"/v2/{REPO}/blobs/uploads/").raise_for_status().headers["location"]
            client.patch(location, content=b"x" * 100,
                         headers={"content-type": "application/octet-stream"}).raise_for_status()
    finally:
        server.kill()
        server.wait()
    return root / "docker/registry/v2"


@pytest.fixture
def generated(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "gen"
    return root, gen_tree.generate(root, gen_tree.PRESETS["small"])


def test_generated_tree_has_the_shapes_of_a_real_push(real_tree: Path, generated: tuple[Path, dict]) -> None:
    real = tree_shapes(real_tree)
    made = tree_shapes(generated[0] / "docker/registry/v2")
    assert real - made == set(), "shapes a real registry writes that the generator never makes"
    assert made - real == set(), "shapes the generator makes that a real registry never writes"


def test_generated_links_and_blobs_are_well_formed(generated: tuple[Path, dict]) -> None:
    v2 = generated[0] / "docker/registry/v2"
    for link in v2.glob("repositories/**/link"):
        assert re.fullmatch(rb"sha256:[0-9a-f]{64}", link.read_bytes()), link
    for data in v2.glob("blobs/sha256/*/*/data"):
        assert hashlib.sha256(data.read_bytes()).hexdigest() == data.parent.name


def test_generator_is_deterministic(tmp_path: Path) -> None:
    params = replace(gen_tree.PRESETS["small"], repos=5, images=30)
    a = gen_tree.generate(tmp_path / "a", params)
    b = gen_tree.generate(tmp_path / "b", params)
    assert a["gc"] == b["gc"] and a["garbage"]["deleted_manifests"] == b["garbage"]["deleted_manifests"]
    assert sorted(p.name for p in (tmp_path / "a").glob("docker/registry/v2/blobs/*/*/*")) == \
        sorted(p.name for p in (tmp_path / "b").glob("docker/registry/v2/blobs/*/*/*"))


@pytest.mark.parametrize("mode", ["plain", "untagged"])
def test_reference_gc_finds_exactly_the_recorded_garbage(generated: tuple[Path, dict], mode: str) -> None:
    root, report = generated
    argv = [REGISTRY, "garbage-collect", "--dry-run", *(["--delete-untagged"] if mode == "untagged" else []),
            str(root / "config.yml")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = report["gc"][mode]
    assert sorted(GC_LINE.findall(result.stdout)) == expected["eligible_blobs"]
    assert (f"{expected['marked']} blobs marked, {expected['blobs_eligible']} blobs and "
            f"{expected['manifests_eligible']} manifests eligible for deletion") in result.stdout
    garbage = report["garbage"]
    made = garbage["blobs_linked"] + garbage["blobs_unlinked"] + garbage["blobs_orphan"]
    assert len(made) == report["params"]["garbage_blobs"]
    assert set(made) <= set(expected["eligible_blobs"])
    if mode == "plain":
        # beyond the stray blobs, only what the deleted manifests alone held is garbage
        assert expected["blobs_eligible"] > len(made) and garbage["deleted_manifests"]
