"""The full stop-the-world walk: every repository, revision, tag and blob in the storage tree."""

from __future__ import annotations

import errno
import os
import re
import stat
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from .errors import StorageError
from .layout import HEX_LENGTHS, Layout, digest_from_parts, is_repo_name, read_file, read_link
from .manifests import Manifest, parse_manifest
from .records import BlobAdded, LayerLinked, Record, RevisionLinked, TagSet, UploadStarted

Progress = Callable[[int], None]
Dirstate = dict[str, int]


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
    # Digests named by _layers/<alg>/<hex> directories (unchecked names; validated before any use as a path).
    layers: list[str] = field(default_factory=list)
    # Full scans only: uploads in progress (uuid -> startedat, 0 if unknown), and the mtimes of the
    # directories in which an addition would show (docs/safety.md, "offline sweeps").
    uploads: dict[str, float] = field(default_factory=dict)
    dirstate: Dirstate = field(default_factory=dict)


@dataclass
class StorageScan:
    repos: list[RepoScan]
    # Full scans: digest -> (size, mtime_ns) of every blob whose data file exists.
    blobs: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Mark scans: digest -> <xx> directory of every blob directory, unchecked (see list_blobs).
    listed: dict[str, str] = field(default_factory=dict)
    # Full scans only: mtimes of the directories of the repository hierarchy.
    dirstate: Dirstate = field(default_factory=dict)


def scan_storage(
    layout: Layout,
    *,
    read_tags: bool,
    full: bool = False,
    read_layers: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
    sink: Callable[[RepoScan], None] | None = None,
) -> StorageScan:
    """Walk the whole tree. Repositories are split over worker processes; blobs are one more job.

    A full scan (for the index) also reads tags and uploads and records directory mtimes; the
    garbage-collect mark needs none of that, and a dry run does not need the layer links either.
    With a sink, each repository goes to it as soon as it is scanned (while the workers go on)
    instead of into the result.
    """
    check_root(layout)
    dirstate: Dirstate = {}
    names = find_repositories(layout, dirstate if full else None)
    read_tags = read_tags or full
    workers = workers or min(os.cpu_count() or 1, 4)
    repos: list[RepoScan] = []
    take = sink or repos.append
    blob_job = scan_blobs if full else list_blobs
    if workers <= 1 or len(names) < 8:
        for n in names:
            take(scan_repository(layout, n, read_tags=read_tags, full=full, read_layers=read_layers))
        if progress:
            progress(len(names))
        blobs = blob_job(layout)
    else:
        chunks = _chunks(names, workers * 8)
        with ProcessPoolExecutor(workers) as pool:
            blobs_future = pool.submit(blob_job, layout)
            futures = [pool.submit(_scan_chunk, layout, chunk, read_tags, full, read_layers) for chunk in chunks]
            for future, chunk in zip(futures, chunks):
                for repo in future.result():
                    take(repo)
                if progress:
                    progress(len(chunk))
            blobs = blobs_future.result()
    if full:
        return StorageScan(repos, blobs=blobs, dirstate=dirstate)  # type: ignore[arg-type]
    return StorageScan(repos, listed=blobs)  # type: ignore[arg-type]


def check_root(layout: Layout) -> None:
    if not os.path.isdir(layout.root):
        raise StorageError(f"{layout.root}: storage root directory does not exist")
    for path in (layout.v2, layout.repositories, layout.blobs):
        if os.path.islink(path):
            raise StorageError(f"{path}: is a symbolic link; regidx does not follow links inside the storage root")


def find_repositories(layout: Layout, dirstate: Dirstate | None = None) -> list[str]:
    """Repository names in sorted walk order; with dirstate, also the mtime of every directory walked.

    A directory is a repository when it has a `_layers` child (2.8's rule) or a `_manifests`
    child (v3's rule); repositories nest, and `_`-prefixed directories are never descended.
    A full scan (dirstate given) also takes a directory that has only `_uploads`: a first push
    in progress.
    """
    found: list[str] = []
    markers = {"_layers", "_manifests"} | ({"_uploads"} if dirstate is not None else set())

    def walk(path: str, name: str) -> None:
        if dirstate is not None:
            record_mtime(dirstate, layout, path)
        children = sorted(_list_dirs(path))
        if name and markers.intersection(children):
            if not is_repo_name(name):
                raise StorageError(f"{path}: invalid repository name {name!r}")
            found.append(name)
        for child in children:
            if not child.startswith("_"):
                walk(os.path.join(path, child), f"{name}/{child}" if name else child)

    if os.path.isdir(layout.repositories):
        walk(layout.repositories, "")
    return found


def scan_repository(
    layout: Layout, name: str, *, read_tags: bool, full: bool = False, read_layers: bool = True,
    cache: dict[str, Manifest] | None = None,
) -> RepoScan:
    # Hot path (100,000s of revisions): f-string paths and raw os calls instead of os.path.join.
    repo = RepoScan(name)
    base = f"{layout.repositories}/{name}"
    dirstate = repo.dirstate if full else None
    revisions_dir = f"{base}/_manifests/revisions"
    for digest, entry_path in _iter_digest_dirs(layout, revisions_dir, dirstate):
        link = f"{entry_path}/link"
        try:
            target = read_link(link)
        except FileNotFoundError:
            # The API deletes the link file and leaves its directory; a new link there is an addition.
            if dirstate is not None:
                record_mtime(dirstate, layout, entry_path)
            continue
        except OSError as e:
            raise StorageError(f"{link}: cannot read revision link: {e.strerror}") from None
        if target != digest:
            raise StorageError(f"{link}: revision link holds {target}, not the digest its path names")
        repo.revisions.append(digest)
        manifest = cache.get(digest) if cache is not None else None
        if manifest is None:
            manifest = read_manifest(layout, name, digest)
            if cache is not None and manifest is not None:
                cache[digest] = manifest
        if manifest is not None:
            repo.manifests[digest] = manifest
    if read_tags:
        repo.tags = _read_tags(layout, f"{base}/_manifests/tags", dirstate)
    layers_dir = f"{base}/_layers"
    # A layer link is its directory: the API's blob delete removes only the link file, and what the
    # index needs of a link (remove it with its blob, restart the blob's clock) holds either way.
    if dirstate is None:
        # Deletion needs only the names; they are validated if a blob they name is deleted.
        if read_layers:
            repo.layers = [f"{alg}:{h}" for alg in _list_dirs(layers_dir) for h in _list_dirs(f"{layers_dir}/{alg}")]
        return repo
    repo.layers = [digest for digest, _ in _iter_digest_dirs(layout, layers_dir, dirstate)]
    for path in (f"{base}/_manifests", revisions_dir, layers_dir):
        record_mtime(dirstate, layout, path)
    repo.uploads = _read_uploads(f"{base}/_uploads")
    return repo


def scan_blobs(layout: Layout) -> dict[str, tuple[int, int]]:
    """digest -> (size, mtime_ns) for every blobs/<alg>/<xx>/<hex>/data file."""
    return stat_blobs(layout, list_blobs(layout))


def list_blobs(layout: Layout) -> dict[str, str]:
    """digest -> its <xx> directory, for every blob directory, unchecked: one listing per prefix.

    The mark needs to know only which blobs it did not mark; `stat_blobs` then checks those.
    """
    blobs: dict[str, str] = {}
    for alg in _list_dirs(layout.blobs):
        alg_dir = f"{layout.blobs}/{alg}"
        for prefix in _list_dirs(alg_dir):
            for hex_ in _list_dirs(f"{alg_dir}/{prefix}"):
                blobs[f"{alg}:{hex_}"] = prefix
    return blobs


def stat_blobs(layout: Layout, listed: dict[str, str]) -> dict[str, tuple[int, int]]:
    """digest -> (size, mtime_ns) of the listed blobs whose data file exists (as upstream counts them)."""
    found: dict[str, tuple[int, int]] = {}
    for digest, prefix in listed.items():
        alg, _, hex_ = digest.partition(":")
        data = f"{layout.blobs}/{alg}/{prefix}/{hex_}/data"
        try:
            st = os.lstat(data)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StorageError(f"{data}: cannot stat blob data: {e.strerror}") from None
        if digest_from_parts(alg, hex_) is None or hex_[:2] != prefix:
            raise StorageError(f"{data}: blob path does not name a valid digest")
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{data}: blob data is not a regular file (symbolic links are not followed)")
        found[digest] = (st.st_size, st.st_mtime_ns)
    return found


def read_startedat(upload_dir: str) -> float:
    """When an upload began, from its startedat file; 0 when missing or unreadable."""
    try:
        with open(os.path.join(upload_dir, "startedat")) as f:
            return datetime.fromisoformat(f.read().strip()).timestamp()
    except (OSError, ValueError):
        return 0.0


def record_mtime(dirstate: Dirstate, layout: Layout, path: str) -> None:
    dirstate[path[len(layout.v2) + 1:]] = mtime_or_absent(path)  # every path here is built below layout.v2


def mtime_or_absent(path: str) -> int:
    """What the offline check records of a path: its mtime, or -1 when it is absent (its parent's
    mtime then shows its creation)."""
    try:
        return os.lstat(path).st_mtime_ns
    except FileNotFoundError:
        return -1


def _scan_chunk(layout: Layout, names: list[str], read_tags: bool, full: bool, read_layers: bool) -> list[RepoScan]:
    cache: dict[str, Manifest] = {}
    return [scan_repository(layout, n, read_tags=read_tags, full=full, read_layers=read_layers, cache=cache)
            for n in names]


def read_manifest(layout: Layout, repo: str, digest: str) -> Manifest | None:
    """The parsed manifest of repo@digest, or None when its blob data does not exist."""
    path = layout.blob_data(digest)
    try:
        data = read_file(path)
    except FileNotFoundError:
        return None  # revision whose blob data is gone: skipped, as upstream does
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StorageError(f"{path}: manifest data is a symbolic link; regidx does not follow links") from None
        raise StorageError(f"{path}: cannot read manifest of {repo}@{digest}: {e.strerror}") from None
    return parse_manifest(data, f"{repo}@{digest} ({path})")


def _read_tags(layout: Layout, tags_dir: str, dirstate: Dirstate | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    if dirstate is not None:
        record_mtime(dirstate, layout, tags_dir)
    for tag in sorted(_list_dirs(tags_dir)):
        link = os.path.join(tags_dir, tag, "current", "link")
        if dirstate is not None:
            # 2.8 rewrites current/link in place, upstream main renames a new file over it: either way
            # the link file's own mtime moves. A new or removed tag moves the tags directory's.
            record_mtime(dirstate, layout, link)
        try:
            tags[tag] = read_link(link)
        except FileNotFoundError:
            continue  # upstream skips a tag without a current link
        except OSError as e:
            raise StorageError(f"{link}: cannot read tag link: {e.strerror}") from None
    return tags


def _read_uploads(uploads_dir: str) -> dict[str, float]:
    return {uuid: read_startedat(os.path.join(uploads_dir, uuid)) for uuid in sorted(_list_dirs(uploads_dir))}


def _iter_digest_dirs(layout: Layout, base: str, dirstate: Dirstate | None) -> Iterator[tuple[str, str]]:
    """(digest, path) of every <base>/<alg>/<hex> directory, sorted as the registry walks them."""
    for alg in sorted(_list_dirs(base)):
        alg_dir = f"{base}/{alg}"
        if dirstate is not None:
            record_mtime(dirstate, layout, alg_dir)
        names = sorted(_list_dirs(alg_dir))
        if not _all_hex(alg, names):
            bad = next(h for h in names if digest_from_parts(alg, h) is None)
            raise StorageError(f"{alg_dir}/{bad}: directory name is not a valid digest")
        for hex_ in names:
            yield f"{alg}:{hex_}", f"{alg_dir}/{hex_}"


_HEX_LIST_RE = {alg: re.compile(f"[0-9a-f]{{{n}}}(?:\n[0-9a-f]{{{n}}})*") for alg, n in HEX_LENGTHS.items()}


def _all_hex(alg: str, names: list[str]) -> bool:
    """Whether every name is a valid hex for alg: one regex over them all (thousands per repository)."""
    pattern = _HEX_LIST_RE.get(alg)
    return pattern is not None and (not names or pattern.fullmatch("\n".join(names)) is not None)


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


def iter_records(scan: StorageScan) -> Iterator[Record]:
    """The scan as records, in the order that builds an index cheaply one record at a time:
    references before blobs, so that a referenced blob never passes through the candidate list."""
    for repo in scan.repos:
        yield from repo_records(repo)
    yield from blob_records(scan.blobs)


def repo_records(repo: RepoScan) -> Iterator[Record]:
    for digest in repo.revisions:
        yield RevisionLinked(repo.name, digest, repo.manifests.get(digest))
    for tag, digest in repo.tags.items():
        yield TagSet(repo.name, tag, digest)
    for digest in repo.layers:
        yield LayerLinked(repo.name, digest)
    for uuid, started in repo.uploads.items():
        yield UploadStarted(repo.name, uuid, started)


def blob_records(blobs: dict[str, tuple[int, int]]) -> Iterator[Record]:
    for digest, (size, mtime_ns) in blobs.items():
        yield BlobAdded(digest, size, mtime_ns)


def all_dirstate(scan: StorageScan) -> Iterator[tuple[str, int]]:
    yield from scan.dirstate.items()
    for repo in scan.repos:
        yield from repo.dirstate.items()
