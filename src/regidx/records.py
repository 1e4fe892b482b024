"""The small set of facts about the storage tree that the scanner, the watcher and the index share."""

from __future__ import annotations

from typing import NamedTuple, Union

from .manifests import Manifest


class RevisionLinked(NamedTuple):
    """_manifests/revisions/<alg>/<hex>/link exists. manifest is None while its blob data is missing."""

    repo: str
    digest: str
    manifest: Manifest | None


class RevisionUnlinked(NamedTuple):
    repo: str
    digest: str


class TagSet(NamedTuple):
    repo: str
    tag: str
    digest: str


class TagRemoved(NamedTuple):
    repo: str
    tag: str


class LayerLinked(NamedTuple):
    repo: str
    digest: str


class LayerUnlinked(NamedTuple):
    repo: str
    digest: str


class BlobAdded(NamedTuple):
    digest: str
    size: int
    mtime_ns: int


class BlobRemoved(NamedTuple):
    digest: str


class UploadStarted(NamedTuple):
    repo: str
    uuid: str
    started: float  # seconds since the epoch; 0 when startedat is missing or unreadable


class UploadRemoved(NamedTuple):
    repo: str
    uuid: str


Record = Union[
    RevisionLinked, RevisionUnlinked, TagSet, TagRemoved, LayerLinked, LayerUnlinked,
    BlobAdded, BlobRemoved, UploadStarted, UploadRemoved,
]
