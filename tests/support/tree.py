"""Writes storage trees directly, with the layout a real push leaves, for tests that need no server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from regidx.layout import Layout
from regidx.manifests import DOCKER_LIST, DOCKER_V2, OCI_INDEX, OCI_MANIFEST

CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Img:
    repo: str
    digest: str
    blobs: tuple[str, ...]  # config and layers


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = Layout(root)
        os.makedirs(self.layout.blobs, exist_ok=True)
        os.makedirs(self.layout.repositories, exist_ok=True)
        self.config = root.parent / f"{root.name}-config.yml"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        )

    def blob(self, data: bytes) -> str:
        digest = digest_of(data)
        path = self.layout.blob_data(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(data)
        return digest

    def link(self, path: str, digest: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_text(digest)

    def layer_link(self, repo: str, digest: str) -> None:
        self.link(os.path.join(self.layout.layer_link_dir(repo, digest), "link"), digest)
        os.makedirs(self.layout.uploads_dir(repo), exist_ok=True)

    def manifest(self, repo: str, body: bytes, tag: str | None = None) -> str:
        digest = self.blob(body)
        self.link(os.path.join(self.layout.revision_dir(repo, digest), "link"), digest)
        if tag:
            self.tag(repo, tag, digest)
        return digest

    def tag(self, repo: str, tag: str, digest: str) -> None:
        self.link(os.path.join(self.layout.tag_index_dir(repo, tag, digest), "link"), digest)
        self.link(self.layout.tag_current_link(repo, tag), digest)

    def image(self, repo: str, tag: str | None = None, layers: list[bytes] | None = None,
              oci: bool = False, subject: str | None = None, seed: str = "") -> Img:
        layers = layers if layers is not None else [f"{repo}:{tag}:{seed}:layer".encode()]
        config = self.blob(f'{{"config":"{repo}:{tag}:{seed}"}}'.encode())
        layer_digests = [self.blob(data) for data in layers]
        for d in (config, *layer_digests):
            self.layer_link(repo, d)
        doc: dict = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_V2,
            "config": {"mediaType": CONFIG_TYPE, "digest": config, "size": 1},
            "layers": [{"mediaType": LAYER_TYPE, "digest": d, "size": 1} for d in layer_digests],
        }
        if subject:
            doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
        digest = self.manifest(repo, json.dumps(doc).encode(), tag)
        return Img(repo, digest, (config, *layer_digests))

    def index(self, repo: str, children: list[Img], tag: str | None = None, oci: bool = False) -> Img:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX if oci else DOCKER_LIST,
            "manifests": [{"mediaType": DOCKER_V2, "digest": c.digest, "size": 1} for c in children],
        }
        return Img(repo, self.manifest(repo, json.dumps(doc).encode(), tag), ())

    def delete_manifest(self, repo: str, digest: str) -> None:
        """What DELETE /v2/<repo>/manifests/<digest> does: the link file goes, the directory stays."""
        os.unlink(os.path.join(self.layout.revision_dir(repo, digest), "link"))
        tags_dir = self.layout.tags_dir(repo)
        for tag in os.listdir(tags_dir) if os.path.isdir(tags_dir) else []:
            current = Path(self.layout.tag_current_link(repo, tag))
            if current.exists() and current.read_text() == digest:
                shutil.rmtree(self.layout.tag_dir(repo, tag))

    def blobs_on_disk(self) -> set[str]:
        return blobs_on_disk(self.layout)


def blobs_on_disk(layout: Layout) -> set[str]:
    """Every digest with a data file under blobs/, found by a plain os.walk (not by regidx's scanner)."""
    found = set()
    for dirpath, _, files in os.walk(layout.blobs):
        if "data" in files:
            found.add("sha256:" + os.path.basename(dirpath))
    return found
