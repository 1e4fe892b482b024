"""A minimal Docker Registry HTTP API v2 client and image builders for tests."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_FOREIGN_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_bytes(seed: str, size: int = 1024) -> bytes:
    """Deterministic pseudo-random bytes: same seed, same blob, same digest."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


class RegistryError(Exception):
    """An unexpected answer from the registry (status 200 if the body was cut short)."""

    def __init__(self, message: str, status: int, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _check(response: httpx.Response, *expected: int) -> httpx.Response:
    if response.status_code not in expected:
        req = response.request
        raise RegistryError(
            f"{req.method} {req.url} -> {response.status_code} (expected {expected}): "
            f"{response.text[:2000]}",
            response.status_code,
            response.text,
        )
    return response


class RegistryClient:
    """Sync v2 API client; `repo` is a repository name like `team/app`."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blobs ----------------------------------------------------------------------------

    def _begin_upload(self, repo: str) -> httpx.Response:
        return _check(self.http.post(f"/v2/{repo}/blobs/uploads/"), 202)

    def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic upload: POST, then PUT ?digest= with the whole body."""
        digest = sha256_digest(data)
        location = self._begin_upload(repo).headers["Location"]
        url = httpx.URL(location).copy_merge_params({"digest": digest})
        r = _check(self.http.put(url, content=data, headers=_octets(len(data))), 201)
        assert r.headers.get("Docker-Content-Digest") == digest, r.headers
        return digest

    def push_blob_chunked(self, repo: str, data: bytes, chunk_size: int = 64 * 1024) -> str:
        """Chunked upload: POST, a PATCH per chunk (Content-Range), then an empty PUT ?digest=."""
        digest = sha256_digest(data)
        location = self._begin_upload(repo).headers["Location"]
        for start in range(0, len(data), chunk_size):
            chunk = data[start : start + chunk_size]
            headers = _octets(len(chunk)) | {"Content-Range": f"{start}-{start + len(chunk) - 1}"}
            r = _check(self.http.patch(location, content=chunk, headers=headers), 202)
            location = r.headers["Location"]
        url = httpx.URL(location).copy_merge_params({"digest": digest})
        _check(self.http.put(url, headers={"Content-Length": "0"}), 201)
        return digest

    def start_upload(self, repo: str, data: bytes = b"unfinished upload") -> str:
        """POST + one PATCH, never completed: leaves `_uploads/<uuid>` behind. Returns the uuid."""
        r = self._begin_upload(repo)
        headers = _octets(len(data))
        _check(self.http.patch(r.headers["Location"], content=data, headers=headers), 202)
        return r.headers["Docker-Upload-UUID"]

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repo mount (POST ?mount=&from=). False if the registry declined."""
        params = {"mount": digest, "from": from_repo}
        r = _check(self.http.post(f"/v2/{repo}/blobs/uploads/", params=params), 201, 202)
        # 202: the registry started an ordinary upload instead. It is left unfinished, because
        # cancelling it (DELETE) in 2.8.2 leaves `_uploads/<uuid>/hashstates/` without
        # `startedat` behind, which upstream purging never removes.
        return r.status_code == 201

    def head_blob(self, repo: str, digest: str) -> int:
        return self.http.head(f"/v2/{repo}/blobs/{digest}").status_code

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self._get(f"/v2/{repo}/blobs/{digest}").content

    def _get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            # Redirects only happen with other storage drivers (or a redirect middleware).
            return _check(self.http.get(url, headers=headers, follow_redirects=True), 200)
        except httpx.RemoteProtocolError as e:
            # Data deleted behind the blob-descriptor cache's back: 2.8.2 answers 200 with a
            # Content-Length, then sends no body.
            raise RegistryError(f"GET {url}: 200 but body incomplete ({e})", 200) from e

    def delete_blob(self, repo: str, digest: str) -> None:
        _check(self.http.delete(f"/v2/{repo}/blobs/{digest}"), 202)

    # -- manifests ------------------------------------------------------------------------

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        url = f"/v2/{repo}/manifests/{reference}"
        r = _check(self.http.put(url, content=body, headers={"Content-Type": media_type}), 201)
        digest = r.headers["Docker-Content-Digest"]
        assert digest == sha256_digest(body), (digest, sha256_digest(body))
        return digest

    def get_manifest(
        self, repo: str, reference: str, accept: tuple[str, ...] | str = MANIFEST_TYPES
    ) -> tuple[bytes, str, str]:
        """Returns (body, media type, Docker-Content-Digest)."""
        headers = {"Accept": accept if isinstance(accept, str) else ", ".join(accept)}
        r = self._get(f"/v2/{repo}/manifests/{reference}", headers)
        return r.content, r.headers["Content-Type"], r.headers["Docker-Content-Digest"]

    def head_manifest(
        self, repo: str, reference: str, accept: tuple[str, ...] | str = MANIFEST_TYPES
    ) -> int:
        headers = {"Accept": accept if isinstance(accept, str) else ", ".join(accept)}
        return self.http.head(f"/v2/{repo}/manifests/{reference}", headers=headers).status_code

    def delete_manifest(self, repo: str, digest: str) -> None:
        _check(self.http.delete(f"/v2/{repo}/manifests/{digest}"), 202)

    # -- listings -------------------------------------------------------------------------

    def tags(self, repo: str) -> list[str]:
        return _check(self.http.get(f"/v2/{repo}/tags/list"), 200).json().get("tags") or []

    def catalog(self, page_size: int = 100) -> list[str]:
        """All repository names, following the Link header across pages."""
        names: list[str] = []
        url: str | None = f"/v2/_catalog?n={page_size}"
        while url:
            r = _check(self.http.get(url), 200)
            names += r.json().get("repositories") or []
            url = r.links.get("next", {}).get("url")
        return names


def _octets(length: int) -> dict[str, str]:
    return {"Content-Type": "application/octet-stream", "Content-Length": str(length)}


# --- image builders ------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: dict[str, str] | None = field(default=None, hash=False, compare=False)
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.platform:
            d["platform"] = self.platform
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d


@dataclass(frozen=True)
class Image:
    """A pushed manifest (image, index or referrer) and what it references."""

    repo: str
    digest: str
    manifest: bytes
    media_type: str
    tag: str | None = None
    config_digest: str | None = None  # None for indexes
    layer_digests: tuple[str, ...] = ()  # pushed layers only (foreign layers excluded)
    foreign_digests: tuple[str, ...] = ()  # in the manifest, never uploaded
    children: tuple[Image, ...] = ()  # for indexes
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def blobs(self) -> frozenset[str]:
        """Uploaded blobs this manifest references directly (config + layers)."""
        return frozenset(filter(None, (self.config_digest, *self.layer_digests)))

    def descriptor(self, platform: dict[str, str] | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, platform=platform)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=3).encode()  # docker's own indent, for realism


def push_image(
    client: RegistryClient,
    repo: str,
    *,
    tag: str | None = None,
    layers: list[bytes],
    oci: bool = False,
    config: bytes | None = None,
    foreign_layer: bool = False,
    subject: Descriptor | None = None,
) -> Image:
    """Push config and layers, then a Docker schema2 or OCI image manifest (by tag or digest)."""
    if config is None:  # deterministic: derived from the layers
        config = _dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b) for b in layers]},
            }
        )
    config_digest = client.push_blob(repo, config)
    layer_digests = tuple(client.push_blob(repo, b) for b in layers)
    layer_type = OCI_LAYER if oci else DOCKER_LAYER
    descs = [Descriptor(layer_type, d, len(b)) for d, b in zip(layer_digests, layers)]
    foreign: tuple[str, ...] = ()
    if foreign_layer:
        # Never uploaded: clients fetch it from `urls`; the registry must not require it.
        data = layer_bytes(f"foreign:{repo}:{config_digest}", 512)
        foreign = (sha256_digest(data),)
        descs.append(
            Descriptor(
                OCI_FOREIGN_LAYER if oci else DOCKER_FOREIGN_LAYER,
                foreign[0],
                len(data),
                urls=(f"https://example.invalid/layers/{foreign[0]}",),
            )
        )
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": Descriptor(
            OCI_CONFIG if oci else DOCKER_CONFIG, config_digest, len(config)
        ).to_json(),
        "layers": [d.to_json() for d in descs],
    }
    if subject:
        body["subject"] = subject.to_json()
    image = Image(
        repo=repo,
        digest="",
        manifest=_dumps(body),
        media_type=body["mediaType"],
        tag=tag,
        config_digest=config_digest,
        layer_digests=layer_digests,
        foreign_digests=foreign,
        subject=subject,
    )
    return _put(client, image)


def push_index(
    client: RegistryClient,
    repo: str,
    *,
    tag: str | None = None,
    children: list[Image],
    oci: bool = False,
) -> Image:
    """Push a Docker manifest list or OCI index; children must already be in `repo`."""
    media_type = OCI_INDEX if oci else DOCKER_LIST
    manifests = [
        c.descriptor(platform={"architecture": _ARCHES[i % len(_ARCHES)], "os": "linux"}).to_json()
        for i, c in enumerate(children)
    ]
    body = {"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}
    image = Image(
        repo=repo,
        digest="",
        manifest=_dumps(body),
        media_type=media_type,
        tag=tag,
        children=tuple(children),
    )
    return _put(client, image)


_ARCHES = ("amd64", "arm64", "arm", "ppc64le", "s390x", "386")


def push_referrer(
    client: RegistryClient,
    repo: str,
    subject: Image,
    artifact_type: str = "application/vnd.example.sbom.v1+json",
    blob: bytes = b'{"sbom": "example"}',
) -> Image:
    """Push an untagged OCI artifact manifest whose `subject` is `subject` (e.g. an SBOM)."""
    config_digest = client.push_blob(repo, EMPTY_JSON)
    blob_digest = client.push_blob(repo, blob)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": Descriptor(OCI_EMPTY, config_digest, len(EMPTY_JSON)).to_json(),
        "layers": [Descriptor(artifact_type, blob_digest, len(blob)).to_json()],
        "subject": subject.descriptor().to_json(),
    }
    image = Image(
        repo=repo,
        digest="",
        manifest=_dumps(body),
        media_type=OCI_MANIFEST,
        config_digest=config_digest,
        layer_digests=(blob_digest,),
        subject=subject.descriptor(),
        artifact_type=artifact_type,
    )
    return _put(client, image)


def _put(client: RegistryClient, image: Image) -> Image:
    """PUT by tag if the image has one, else by digest; fill in the digest."""
    reference = image.tag or sha256_digest(image.manifest)
    pushed = client.put_manifest(image.repo, reference, image.manifest, image.media_type)
    return replace(image, digest=pushed)


def pull_and_verify(client: RegistryClient, repo: str, reference: str) -> list[str]:
    """Pull a manifest (recursing into indexes) and every blob it references; check all digests.

    Returns the verified digests in pull order. Foreign layers (with `urls`) are not fetched.
    Raises AssertionError naming the first broken manifest or blob.
    """
    verified: list[str] = []
    _pull(client, repo, reference, None, verified)
    return verified


def _pull(
    client: RegistryClient, repo: str, ref: str, expect: Descriptor | None, verified: list[str]
) -> None:
    where = f"{repo}@{ref}"
    try:
        body, media_type, header_digest = client.get_manifest(repo, ref)
    except RegistryError as e:
        raise AssertionError(f"manifest {where}: {e}") from e
    actual = sha256_digest(body)
    assert actual == header_digest, f"manifest {where}: body is {actual}, header {header_digest}"
    if ref.startswith("sha256:"):
        assert actual == ref, f"manifest {where}: body hashes to {actual}"
    if expect is not None:
        assert media_type == expect.media_type, (
            f"manifest {where}: served as {media_type}, index says {expect.media_type}"
        )
        assert len(body) == expect.size, f"manifest {where}: size {len(body)} != {expect.size}"
    parsed = json.loads(body)
    assert parsed.get("mediaType", media_type) == media_type, f"manifest {where}: mediaType field"
    if actual not in verified:
        verified.append(actual)

    if media_type in INDEX_TYPES:
        for child in parsed["manifests"]:
            desc = Descriptor(child["mediaType"], child["digest"], child["size"])
            _pull(client, repo, desc.digest, desc, verified)
        return
    for d in [parsed["config"], *parsed.get("layers", [])]:
        if d.get("urls"):
            continue
        digest = d["digest"]
        try:
            data = client.get_blob(repo, digest)
        except RegistryError as e:
            raise AssertionError(f"blob {digest} of {where}: {e}") from e
        got = sha256_digest(data)
        broken = f"blob {digest} of {where}"
        assert got == digest, f"{broken}: content hashes to {got} ({len(data)} bytes)"
        assert len(data) == d["size"], f"{broken}: {len(data)} bytes, expected {d['size']}"
        if digest not in verified:
            verified.append(digest)
