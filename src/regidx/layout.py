"""The filesystem driver's storage layout, both directions: names -> paths and paths -> what they are."""

from __future__ import annotations

import errno
import os
import re
from enum import Enum
from typing import NamedTuple

from .errors import InvalidDigest, StorageError

V2 = os.path.join("docker", "registry", "v2")

# Hex lengths of the algorithms go-digest accepts. A digest is always validated with a full
# match before a path is built from it: a link file is untrusted input, and "../" in one must
# never reach os.path.join.
HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
DIGEST_PATTERN = r"(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})"
_DIGEST_RE = re.compile(DIGEST_PATTERN)
_HEX_RE = {alg: re.compile(f"[0-9a-f]{{{n}}}") for alg, n in HEX_LENGTHS.items()}
# The distribution reference grammar for repository names (path components joined by "/").
_REPO_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
# Tags as the registry accepts them.
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
MAX_REPO_NAME = 255


def is_digest(value: str) -> bool:
    return _DIGEST_RE.fullmatch(value) is not None


def check_digest(value: str, where: str) -> str:
    """Return value if it is a valid digest; otherwise raise naming where it came from."""
    if _DIGEST_RE.fullmatch(value) is None:
        raise InvalidDigest(f"{where}: invalid digest {value[:150]!r}")
    return value


def digest_from_parts(alg: str, hex_: str) -> str | None:
    """The digest named by an <alg>/<hex> pair of path components, or None if they name none."""
    pattern = _HEX_RE.get(alg)
    if pattern is None or pattern.fullmatch(hex_) is None:
        return None
    return f"{alg}:{hex_}"


def is_repo_name(name: str) -> bool:
    return len(name) <= MAX_REPO_NAME and all(
        _REPO_COMPONENT_RE.fullmatch(part) for part in name.split("/")
    )


def is_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def read_file(path: str) -> bytes:
    """A whole file, without following a symbolic link (ELOOP), in as few system calls as possible."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 1 << 16)]
        # A short read of a regular file means end of file; only a large one needs another.
        while len(chunks[-1]) == 1 << 16:
            chunks.append(os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_link(path: str) -> str:
    """The digest a link file holds. The registry parses links strictly, and so do we."""
    try:
        raw = read_file(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StorageError(f"{path}: is a symbolic link; regidx does not follow links") from None
        raise
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidDigest(f"{path}: link file is not ASCII") from None
    if not text:
        raise InvalidDigest(f"{path}: link file is empty")
    return check_digest(text, path)


def write_link(path: str, digest: str) -> None:
    """Write a link file as the registry does: the directory first, then the digest with no newline."""
    check_digest(digest, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(digest)


class Kind(Enum):
    BLOB_DATA = "blob data"
    LAYER_LINK = "layer link"
    REVISION_LINK = "revision link"
    TAG_CURRENT_LINK = "tag current link"
    TAG_INDEX_LINK = "tag index link"
    TAG_DIR = "tag directory"
    UPLOAD = "upload"
    REPOSITORY = "repository directory"


class PathInfo(NamedTuple):
    """What a path under the v2 root is. Fields that do not apply are empty strings."""

    kind: Kind
    repo: str = ""
    digest: str = ""
    tag: str = ""
    upload: str = ""


class Layout:
    """Every path regidx builds or parses, relative to one storage root directory."""

    def __init__(self, rootdirectory: str | os.PathLike[str]) -> None:
        self.root = os.fspath(rootdirectory)
        self.v2 = os.path.join(self.root, V2)
        self.blobs = os.path.join(self.v2, "blobs")
        self.repositories = os.path.join(self.v2, "repositories")

    # names -> paths -------------------------------------------------------------------------

    def blob_dir(self, digest: str) -> str:
        alg, hex_ = _split(digest)
        return f"{self.blobs}/{alg}/{hex_[:2]}/{hex_}"

    def blob_data(self, digest: str) -> str:
        return f"{self.blob_dir(digest)}/data"

    def repo_dir(self, repo: str) -> str:
        if not is_repo_name(repo):
            raise StorageError(f"invalid repository name {repo!r}")
        return os.path.join(self.repositories, repo)

    def layer_link_dir(self, repo: str, digest: str) -> str:
        alg, hex_ = _split(digest)
        return os.path.join(self.repo_dir(repo), "_layers", alg, hex_)

    def revision_dir(self, repo: str, digest: str) -> str:
        alg, hex_ = _split(digest)
        return os.path.join(self.repo_dir(repo), "_manifests", "revisions", alg, hex_)

    def tags_dir(self, repo: str) -> str:
        return os.path.join(self.repo_dir(repo), "_manifests", "tags")

    def tag_dir(self, repo: str, tag: str) -> str:
        if not is_tag(tag):
            raise StorageError(f"invalid tag {tag!r} in repository {repo}")
        return os.path.join(self.tags_dir(repo), tag)

    def tag_current_link(self, repo: str, tag: str) -> str:
        return os.path.join(self.tag_dir(repo, tag), "current", "link")

    def tag_index_dir(self, repo: str, tag: str, digest: str) -> str:
        alg, hex_ = _split(digest)
        return os.path.join(self.tag_dir(repo, tag), "index", alg, hex_)

    def uploads_dir(self, repo: str) -> str:
        return os.path.join(self.repo_dir(repo), "_uploads")

    # paths -> names -------------------------------------------------------------------------

    def classify(self, path: str) -> PathInfo | None:
        """What an absolute path below the v2 root is, or None if it is nothing regidx tracks."""
        rel = os.path.relpath(path, self.v2)
        if rel.startswith(".."):
            return None
        parts = rel.split(os.sep)
        if parts[0] == "blobs":
            return _classify_blob(parts[1:])
        if parts[0] == "repositories":
            return _classify_repo_path(parts[1:])
        return None


def _split(digest: str) -> tuple[str, str]:
    if _DIGEST_RE.fullmatch(digest) is None:
        raise InvalidDigest(f"invalid digest {digest[:150]!r}")
    alg, _, hex_ = digest.partition(":")
    return alg, hex_


def _classify_blob(parts: list[str]) -> PathInfo | None:
    # <alg>/<xx>/<hex>/data
    if len(parts) != 4 or parts[3] != "data":
        return None
    alg, prefix, hex_, _ = parts
    digest = digest_from_parts(alg, hex_)
    if digest is None or hex_[:2] != prefix:
        return None
    return PathInfo(Kind.BLOB_DATA, digest=digest)


def _classify_repo_path(parts: list[str]) -> PathInfo | None:
    # The repository name is every component before the first "_"-prefixed one.
    for i, part in enumerate(parts):
        if part.startswith("_"):
            break
    else:
        name = "/".join(parts)
        return PathInfo(Kind.REPOSITORY, repo=name) if name and is_repo_name(name) else None
    repo = "/".join(parts[:i])
    if not repo or not is_repo_name(repo):
        return None
    rest = parts[i:]
    head = rest[0]
    if head == "_layers" and len(rest) == 4 and rest[3] == "link":
        digest = digest_from_parts(rest[1], rest[2])
        return PathInfo(Kind.LAYER_LINK, repo, digest) if digest else None
    if head == "_uploads" and len(rest) >= 2:
        return PathInfo(Kind.UPLOAD, repo, upload=rest[1])
    if head != "_manifests" or len(rest) < 3:
        return None
    if rest[1] == "revisions" and len(rest) == 5 and rest[4] == "link":
        digest = digest_from_parts(rest[2], rest[3])
        return PathInfo(Kind.REVISION_LINK, repo, digest) if digest else None
    if rest[1] != "tags" or not is_tag(rest[2]):
        return None
    tag = rest[2]
    if len(rest) == 3:
        return PathInfo(Kind.TAG_DIR, repo, tag=tag)
    if rest[3:] == ["current", "link"]:
        return PathInfo(Kind.TAG_CURRENT_LINK, repo, tag=tag)
    if len(rest) == 7 and rest[3] == "index" and rest[6] == "link":
        digest = digest_from_parts(rest[4], rest[5])
        return PathInfo(Kind.TAG_INDEX_LINK, repo, digest, tag) if digest else None
    return None
