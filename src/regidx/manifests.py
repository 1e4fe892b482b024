"""Manifest bytes -> the digests they reference, classified exactly as the registry classifies them."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

from .errors import ManifestError
from .layout import DIGEST_PATTERN, is_digest

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
_DIGEST_LIST_RE = re.compile(f"{DIGEST_PATTERN}(?:\n{DIGEST_PATTERN})*")


class Manifest(NamedTuple):
    media_type: str
    # What upstream's References() returns: blobs for images, child manifests for indexes.
    references: tuple[str, ...]
    # The OCI `subject` digest (a referrer points at the manifest it describes), or "".
    subject: str = ""

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse manifest bytes; `where` (repo, digest, path) goes into every error message."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ManifestError(f"{where}: manifest is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: manifest is not a JSON object")
    media_type = doc.get("mediaType") or ""
    if not isinstance(media_type, str):
        raise ManifestError(f"{where}: mediaType is not a string")
    # The withdrawn OCI artifact manifest has no schemaVersion; recognise it before the
    # schemaVersion switch that the registry itself uses for everything else.
    if media_type == OCI_ARTIFACT:
        return Manifest(OCI_ARTIFACT, _digests(doc, "blobs", where), _subject(doc, where))
    version = doc.get("schemaVersion")
    if version == 1:
        return _schema1(doc, where)
    if version != 2:
        raise ManifestError(f"{where}: unrecognized manifest schema version {version!r}")
    if media_type == "":
        # As the registry does: an OCI index if it has a `manifests` list, else an OCI image.
        media_type = OCI_INDEX if doc.get("manifests") is not None else OCI_MANIFEST
    if media_type in (DOCKER_V2, OCI_MANIFEST):
        config = doc.get("config")
        if not isinstance(config, dict):
            raise ManifestError(f"{where}: image manifest has no config descriptor")
        refs = (_descriptor_digest(config, "config", where),) + _digests(doc, "layers", where)
        return Manifest(media_type, refs, _subject(doc, where))
    if media_type in INDEX_TYPES:
        return Manifest(media_type, _digests(doc, "manifests", where), _subject(doc, where))
    raise ManifestError(f"{where}: unrecognized manifest content type {media_type!r}")


def _schema1(doc: dict[str, Any], where: str) -> Manifest:
    layers = doc.get("fsLayers")
    if not isinstance(layers, list):
        raise ManifestError(f"{where}: schema1 manifest has no fsLayers list")
    refs = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ManifestError(f"{where}: fsLayers[{i}] is not an object")
        refs.append(_checked(layer.get("blobSum"), f"fsLayers[{i}].blobSum", where))
    media_type = SCHEMA1_SIGNED if "signatures" in doc else SCHEMA1
    return Manifest(media_type, tuple(refs))


def _digests(doc: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = doc.get(key)
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ManifestError(f"{where}: '{key}' is not a list")
    # Fast path (the full scan parses every manifest): one regex over all digests at once.
    try:
        refs = tuple(d["digest"] for d in items)
        if not refs or _DIGEST_LIST_RE.fullmatch("\n".join(refs)):
            return refs
    except (TypeError, KeyError):
        pass
    # Slow path: find the bad descriptor and name it.
    return tuple(_descriptor_digest(d, f"{key}[{i}]", where) for i, d in enumerate(items))


def _descriptor_digest(desc: Any, name: str, where: str) -> str:
    if not isinstance(desc, dict):
        raise ManifestError(f"{where}: {name} is not a descriptor object")
    return _checked(desc.get("digest"), f"{name}.digest", where)


def _subject(doc: dict[str, Any], where: str) -> str:
    subject = doc.get("subject")
    return "" if subject is None else _descriptor_digest(subject, "subject", where)


def _checked(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not is_digest(value):
        raise ManifestError(f"{where}: {name} is not a valid digest: {str(value)[:150]!r}")
    return value
