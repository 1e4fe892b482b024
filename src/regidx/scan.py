"""The full stop-the-world walk: every repository, revision, tag and blob in the storage tree."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .errors import StorageError
from .layout import Layout, digest_from_parts, is_repo_name, read_link
from .manifests import Manifest, parse_manifest

Progress = Callable[[int], None]


@dataclass
class RepoScan:
    """One repository as the walk found it."""

    name: str
    # Digests with a valid revision link, in the registry's (sorted) walk order.
    revisions: list[str] = field(default_factory=list)
    # Parsed manifests of the revisions whose blob data exists; the others are skipped, as upstream.
    manifests: dict[str, Manifest] = field(default_factory=dict)
    # tag -> digest its current link points at (read only when asked for).
    tags: dict[str, str] = field(default_factory=dict)
    # Digests named by _layers/<alg>/<hex> directories (the link file itself is not checked).
    layers: list[str] = field(default_factory=list)


@dataclass
class StorageScan:
    repos: list[RepoScan]
    # digest -> size of every blob whose data file exists.
    blobs: dict[str, int]


def scan_storage(
    layout: Layout, *, read_tags: bool, workers: int | None = None, progress: Progress | None = None
) -> StorageScan:
    """Walk the whole tree. Repositories are split over worker processes; blobs are one more job."""
    check_root(layout)
    names = find_repositories(layout)
    workers = workers or min(os.cpu_count() or 1, 4)
    if workers <= 1 or len(names) < 8:
        repos = [scan_repository(layout, n, read_tags=read_tags) for n in names]
        return StorageScan(repos, scan_blobs(layout))
    chunks = _chunks(names, workers * 8)
    with ProcessPoolExecutor(workers) as pool:
        blobs_future = pool.submit(scan_blobs, layout)
        futures = [pool.submit(_scan_chunk, layout, chunk, read_tags) for chunk in chunks]
        repos: list[RepoScan] = []
        for future, chunk in zip(futures, chunks):
            repos.extend(future.result())
            if progress:
                progress(len(chunk))
        return StorageScan(repos, blobs_future.result())


def check_root(layout: Layout) -> None:
    if not os.path.isdir(layout.root):
        raise StorageError(f"{layout.root}: storage root directory does not exist")
    for path in (layout.v2, layout.repositories, layout.blobs):
        if os.path.islink(path):
            raise StorageError(f"{path}: is a symbolic link; regidx does not follow links inside the storage root")


def find_repositories(layout: Layout) -> list[str]:
    """Repository names in sorted walk order.

    A directory is a repository when it has a `_layers` child (2.8's rule) or a `_manifests`
    child (v3's rule); repositories nest, and `_`-prefixed directories are never descended.
    """
    found: list[str] = []

    def walk(path: str, name: str) -> None:
        children = sorted(_list_dirs(path))
        if name and ("_layers" in children or "_manifests" in children):
            if not is_repo_name(name):
                raise StorageError(f"{path}: invalid repository name {name!r}")
            found.append(name)
        for child in children:
            if not child.startswith("_"):
                walk(os.path.join(path, child), f"{name}/{child}" if name else child)

    if os.path.isdir(layout.repositories):
        walk(layout.repositories, "")
    return found


def scan_repository(layout: Layout, name: str, *, read_tags: bool, cache: dict[str, Manifest] | None = None) -> RepoScan:
    repo = RepoScan(name)
    base = os.path.join(layout.repositories, name)
    revisions_dir = os.path.join(base, "_manifests", "revisions")
    for digest, entry_path in _iter_digest_dirs(revisions_dir):
        link = os.path.join(entry_path, "link")
        try:
            target = read_link(link)
        except FileNotFoundError:
            continue  # the API deletes the link file and leaves its directory
        except OSError as e:
            raise StorageError(f"{link}: cannot read revision link: {e.strerror}") from None
        if target != digest:
            raise StorageError(f"{link}: revision link holds {target}, not the digest its path names")
        repo.revisions.append(digest)
        manifest = _read_manifest(layout, name, digest, cache)
        if manifest is not None:
            repo.manifests[digest] = manifest
    if read_tags:
        repo.tags = _read_tags(os.path.join(base, "_manifests", "tags"))
    repo.layers = [digest for digest, _ in _iter_digest_dirs(os.path.join(base, "_layers"))]
    return repo


def scan_blobs(layout: Layout) -> dict[str, int]:
    """digest -> size for every blobs/<alg>/<xx>/<hex>/data file."""
    blobs: dict[str, int] = {}
    for alg in sorted(_list_dirs(layout.blobs)):
        alg_dir = os.path.join(layout.blobs, alg)
        for prefix in sorted(_list_dirs(alg_dir)):
            prefix_dir = os.path.join(alg_dir, prefix)
            for hex_ in _list_dirs(prefix_dir):
                data = os.path.join(prefix_dir, hex_, "data")
                try:
                    st = os.lstat(data)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise StorageError(f"{data}: cannot stat blob data: {e.strerror}") from None
                digest = digest_from_parts(alg, hex_)
                if digest is None or hex_[:2] != prefix:
                    raise StorageError(f"{data}: blob path does not name a valid digest")
                if not stat.S_ISREG(st.st_mode):
                    raise StorageError(f"{data}: blob data is not a regular file (symbolic links are not followed)")
                blobs[digest] = st.st_size
    return blobs


def _scan_chunk(layout: Layout, names: list[str], read_tags: bool) -> list[RepoScan]:
    cache: dict[str, Manifest] = {}
    return [scan_repository(layout, n, read_tags=read_tags, cache=cache) for n in names]


def _read_manifest(layout: Layout, repo: str, digest: str, cache: dict[str, Manifest] | None) -> Manifest | None:
    if cache is not None and digest in cache:
        return cache[digest]
    path = layout.blob_data(digest)
    try:
        if os.path.islink(path):
            raise StorageError(f"{path}: manifest data is a symbolic link; regidx does not follow links")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None  # revision whose blob data is gone: skipped, as upstream does
    except IsADirectoryError:
        raise StorageError(f"{path}: manifest data is a directory") from None
    except PermissionError as e:
        raise StorageError(f"{path}: cannot read manifest of {repo}@{digest}: {e.strerror}") from None
    manifest = parse_manifest(data, f"{repo}@{digest} ({path})")
    if cache is not None:
        cache[digest] = manifest
    return manifest


def _read_tags(tags_dir: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for tag in sorted(_list_dirs(tags_dir)):
        link = os.path.join(tags_dir, tag, "current", "link")
        try:
            tags[tag] = read_link(link)
        except FileNotFoundError:
            continue  # upstream skips a tag without a current link
        except OSError as e:
            raise StorageError(f"{link}: cannot read tag link: {e.strerror}") from None
    return tags


def _iter_digest_dirs(base: str) -> Iterator[tuple[str, str]]:
    """(digest, path) of every <base>/<alg>/<hex> directory, sorted as the registry walks them."""
    for alg in sorted(_list_dirs(base)):
        alg_dir = os.path.join(base, alg)
        for hex_ in sorted(_list_dirs(alg_dir)):
            path = os.path.join(alg_dir, hex_)
            digest = digest_from_parts(alg, hex_)
            if digest is None:
                raise StorageError(f"{path}: directory name is not a valid digest")
            yield digest, path


def _list_dirs(path: str) -> list[str]:
    """Names of the subdirectories of path; [] if it does not exist. Symbolic links are refused."""
    try:
        with os.scandir(path) as it:
            names = []
            for entry in it:
                if entry.is_symlink():
                    raise StorageError(f"{entry.path}: is a symbolic link; regidx does not follow links inside the storage root")
                if entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
            return names
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise StorageError(f"{path}: expected a directory") from None
    except PermissionError as e:
        raise StorageError(f"{path}: cannot list directory: {e.strerror}") from None


def _chunks(items: list[str], n: int) -> list[list[str]]:
    size = max(1, -(-len(items) // n))
    return [items[i : i + size] for i in range(0, len(items), size)]

