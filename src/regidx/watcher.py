"""Filesystem events -> "look at this again" touches, with one inotify watch per directory that matters.

Watching the whole tree recursively would need one watch per directory (about ten per image);
this watches only where an addition or removal that matters shows: revision directories, tag
directories and their `current`, the few directories of each repository, and the 256 blob
prefix directories. A new directory is watched as soon as its creation is seen, then listed,
so nothing created in it before the watch was added is missed.

Events are not trusted for what they say happened: each becomes a Touch naming a thing (a
revision, a tag, a layer link, a blob, an upload, a repository), and the daemon re-reads that
thing from disk. So duplicates, reordering and partial writes are harmless.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import time
from enum import Enum
from typing import NamedTuple

from watchdog.observers.inotify_c import InotifyConstants as IN
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

from .layout import Kind, Layout, PathInfo, digest_from_parts

log = logging.getLogger("regidx.watcher")

MASK = (IN.IN_CREATE | IN.IN_DELETE | IN.IN_MOVED_FROM | IN.IN_MOVED_TO | IN.IN_CLOSE_WRITE
        | IN.IN_ONLYDIR | IN.IN_DONT_FOLLOW | IN.IN_EXCL_UNLINK)
_CHANGED = IN.IN_CREATE | IN.IN_DELETE | IN.IN_MOVED_FROM | IN.IN_MOVED_TO | IN.IN_CLOSE_WRITE


class Role(Enum):
    TREE = "repositories hierarchy"
    MANIFESTS = "_manifests"
    REVISIONS = "_manifests/revisions"
    REVISION_ALG = "_manifests/revisions/<alg>"
    REVISION = "revision"
    TAGS = "_manifests/tags"
    TAG = "tag"
    TAG_CURRENT = "tag current"
    LAYERS = "_layers"
    LAYER_ALG = "_layers/<alg>"
    UPLOADS = "_uploads"
    BLOBS = "blobs"
    BLOB_ALG = "blobs/<alg>"
    BLOB_PREFIX = "blobs/<alg>/<xx>"
    BLOB_DIR = "blob directory"  # watched only until its data file arrives
    FENCE = "fence"


class Special(Enum):
    FENCE = "fence"
    OVERFLOW = "queue overflow"
    WATCH_FAILED = "watch failed"


class Touch(NamedTuple):
    """Something to re-read from disk (info), or a special event; `at` is when it was seen."""

    info: PathInfo | None
    special: Special | None
    detail: str
    at: float


class _Dir(NamedTuple):
    path: str
    role: Role
    repo: str  # the repository (TREE: the directory's name below repositories/)
    name: str  # REVISION/LAYER/BLOB: the digest; TAG/TAG_CURRENT: the tag


class TreeWatcher:
    """One inotify instance (watchdog's InotifyFD: one descriptor, one reader thread) for the whole tree."""

    def __init__(self, layout: Layout, fence_dir: str, touches: queue.Queue[Touch]) -> None:
        self.layout = layout
        self.fence_dir = fence_dir
        self.touches = touches
        self.dirs: dict[int, _Dir] = {}
        self.blob_dirs: dict[str, int] = {}  # digest -> wd of a blob directory awaiting its data
        self.failed: list[str] = []
        self.inotify = InotifyFD()

    # lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.inotify.start()
        os.makedirs(self.fence_dir, exist_ok=True)
        self._watch(self.fence_dir, Role.FENCE, "", "")
        self._watch_and_list(self.layout.repositories, Role.TREE, "", "", touch=False)
        self._watch_and_list(self.layout.blobs, Role.BLOBS, "", "", touch=False)

    def stop(self) -> None:
        self.inotify.stop()

    @property
    def watches(self) -> int:
        return len(self.dirs)

    # watchdog's callback protocol -------------------------------------------------------------------

    def on_event(self, event: InotifyEvent) -> None:
        d = self.dirs.get(event.wd)
        if d is None or not event.mask & _CHANGED:
            return
        name = os.fsdecode(event.name)
        if not name or name.endswith(".tmp"):
            return  # upstream main writes <link>.<random>.tmp, then renames it into place
        is_dir = bool(event.mask & IN.IN_ISDIR)
        created = bool(event.mask & (IN.IN_CREATE | IN.IN_MOVED_TO))
        self._dispatch(d, name, is_dir, created, touch=True)

    def on_watch_deleted(self, wd: int) -> None:
        d = self.dirs.pop(wd, None)
        if d is not None and d.role is Role.BLOB_DIR:
            self.blob_dirs.pop(d.name, None)

    def on_queue_overflow(self) -> None:
        self._put(None, Special.OVERFLOW, "inotify queue overflowed; events were lost")

    # what each directory's children mean --------------------------------------------------------------

    def _dispatch(self, d: _Dir, name: str, is_dir: bool, created: bool, touch: bool) -> None:
        child = f"{d.path}/{name}"
        role = d.role
        # While the daemon's first listing runs, its reconcile scan covers what is already there.
        put = self._put if touch else _ignore
        if role is Role.TREE:
            if not is_dir:
                return
            repo = f"{d.repo}/{name}" if d.repo else name
            part = {"_manifests": Role.MANIFESTS, "_layers": Role.LAYERS, "_uploads": Role.UPLOADS}.get(name)
            if created and part is not None and d.repo:
                self._watch_and_list(child, part, d.repo, "", touch)
            elif created and not name.startswith("_"):
                self._watch_and_list(child, Role.TREE, repo, "", touch)
            elif not created:
                # A repository (or a part of one) went: look again at everything the index has there.
                put(PathInfo(Kind.REPOSITORY, repo=d.repo if name.startswith("_") else repo))
        elif role is Role.MANIFESTS and is_dir and created and name in ("revisions", "tags"):
            self._watch_and_list(child, Role.REVISIONS if name == "revisions" else Role.TAGS, d.repo, "", touch)
        elif role in (Role.REVISIONS, Role.LAYERS, Role.BLOBS) and is_dir and created:
            sub = {Role.REVISIONS: Role.REVISION_ALG, Role.LAYERS: Role.LAYER_ALG, Role.BLOBS: Role.BLOB_ALG}[role]
            self._watch_and_list(child, sub, d.repo, name, touch)
        elif role is Role.REVISION_ALG and is_dir:
            digest = digest_from_parts(d.name, name)
            if digest:
                if created:
                    self._watch(child, Role.REVISION, d.repo, digest)
                put(PathInfo(Kind.REVISION_LINK, d.repo, digest))
        elif role is Role.REVISION and name == "link":
            put(PathInfo(Kind.REVISION_LINK, d.repo, d.name))
        elif role is Role.TAGS and is_dir:
            if created:
                self._watch_and_list(child, Role.TAG, d.repo, name, touch)
            put(PathInfo(Kind.TAG_CURRENT_LINK, d.repo, tag=name))
        elif role is Role.TAG and is_dir and name == "current":
            if created:
                self._watch(child, Role.TAG_CURRENT, d.repo, d.name)
            put(PathInfo(Kind.TAG_CURRENT_LINK, d.repo, tag=d.name))
        elif role is Role.TAG_CURRENT and name == "link":
            put(PathInfo(Kind.TAG_CURRENT_LINK, d.repo, tag=d.name))
        elif role is Role.LAYER_ALG and is_dir:
            digest = digest_from_parts(d.name, name)
            if digest:
                put(PathInfo(Kind.LAYER_LINK, d.repo, digest))
        elif role is Role.UPLOADS and is_dir:
            put(PathInfo(Kind.UPLOAD, d.repo, upload=name))
        elif role is Role.BLOB_ALG and is_dir and created:
            self._watch_and_list(child, Role.BLOB_PREFIX, "", d.name, touch)
        elif role is Role.BLOB_PREFIX and is_dir:
            digest = digest_from_parts(d.name, name)
            if digest:
                if created and not os.path.exists(f"{child}/data"):
                    self._watch(child, Role.BLOB_DIR, "", digest)  # the data file is renamed in next
                put(PathInfo(Kind.BLOB_DATA, digest=digest))
        elif role is Role.BLOB_DIR and name == "data":
            put(PathInfo(Kind.BLOB_DATA, digest=d.name))
        elif role is Role.FENCE and not is_dir and created:
            put(None, Special.FENCE, name)

    def retry_failed(self) -> bool:
        """Add the watches that failed (each failed directory is listed again); True when none failed."""
        failed, self.failed = self.failed, []
        for path in failed:
            d = self._describe_path(path)
            if d is not None:
                self._watch_and_list(path, d.role, d.repo, d.name, touch=True)
        return not self.failed

    def _describe_path(self, path: str) -> _Dir | None:
        """The role of a directory the watcher tried to watch, worked out from its path."""
        if path == self.fence_dir:
            return _Dir(path, Role.FENCE, "", "")
        rel = os.path.relpath(path, self.layout.v2).split(os.sep)
        if rel[0] == "blobs":
            roles = [Role.BLOBS, Role.BLOB_ALG, Role.BLOB_PREFIX]
            return _Dir(path, roles[len(rel) - 1], "", rel[1] if len(rel) > 1 else "") if len(rel) <= 3 else None
        parts = rel[1:]
        for i, part in enumerate(parts):
            if part.startswith("_"):
                repo, rest = "/".join(parts[:i]), parts[i:]
                break
        else:
            return _Dir(path, Role.TREE, "/".join(parts), "")
        shapes = {
            ("_manifests",): (Role.MANIFESTS, ""), ("_layers",): (Role.LAYERS, ""), ("_uploads",): (Role.UPLOADS, ""),
            ("_manifests", "revisions"): (Role.REVISIONS, ""), ("_manifests", "tags"): (Role.TAGS, ""),
        }
        if tuple(rest) in shapes:
            role, name = shapes[tuple(rest)]
            return _Dir(path, role, repo, name)
        if rest[0] == "_layers" and len(rest) == 2:
            return _Dir(path, Role.LAYER_ALG, repo, rest[1])
        if rest[:2] == ["_manifests", "revisions"] and len(rest) == 3:
            return _Dir(path, Role.REVISION_ALG, repo, rest[2])
        if rest[:2] == ["_manifests", "revisions"] and len(rest) == 4:
            return _Dir(path, Role.REVISION, repo, digest_from_parts(rest[2], rest[3]) or "")
        if rest[:2] == ["_manifests", "tags"] and len(rest) == 3:
            return _Dir(path, Role.TAG, repo, rest[2])
        if rest[:2] == ["_manifests", "tags"] and len(rest) == 4 and rest[3] == "current":
            return _Dir(path, Role.TAG_CURRENT, repo, rest[2])
        return None

    def unwatch_blob_dir(self, digest: str) -> None:
        """The daemon saw the blob's data: its directory needs no watch any more."""
        wd = self.blob_dirs.pop(digest, None)
        if wd is None:
            return
        self.dirs.pop(wd, None)
        try:
            self.inotify.remove_callbacks([(wd, 0)])
        except Exception:  # noqa: BLE001 - already gone with its directory
            pass

    # watches ------------------------------------------------------------------------------------

    def _watch_and_list(self, path: str, role: Role, repo: str, name: str, touch: bool) -> None:
        """Watch path, then treat every child already there as created: nothing falls between."""
        if not self._watch(path, role, repo, name):
            return
        d = _Dir(path, role, repo, name)
        try:
            with os.scandir(path) as it:
                children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except (FileNotFoundError, NotADirectoryError):
            return
        for child, is_dir in sorted(children):
            if not child.endswith(".tmp"):
                self._dispatch(d, child, is_dir, created=True, touch=touch)

    def _watch(self, path: str, role: Role, repo: str, name: str) -> bool:
        try:
            wd = self.inotify.add_callback(os.fsencode(path), MASK, self, 0)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return False  # gone again already: its removal is (or will be) seen by its parent
            self.failed.append(path)
            self._put(None, Special.WATCH_FAILED, f"{path}: {os.strerror(e.errno or 0)}")
            return False
        self.dirs[wd] = _Dir(path, role, repo, name)
        if role is Role.BLOB_DIR:
            self.blob_dirs[name] = wd
        return True

    def _put(self, info: PathInfo | None, special: Special | None = None, detail: str = "") -> None:
        self.touches.put(Touch(info, special, detail, time.monotonic()))


def _ignore(*args: object) -> None:
    pass


def count_needed_watches(layout: Layout) -> int:
    """Roughly how many watches the tree needs now: what the daemon compares with the kernel's limit."""
    n = 3  # repositories/, blobs/, the fence directory
    for alg in _ls(layout.blobs):
        n += 1 + len(_ls(f"{layout.blobs}/{alg}"))
    stack = [layout.repositories]
    while stack:
        path = stack.pop()
        n += 1
        for child in _ls(path):
            if child == "_manifests":
                n += 1
                for alg in _ls(f"{path}/_manifests/revisions"):
                    n += 1 + len(_ls(f"{path}/_manifests/revisions/{alg}"))
                n += 1 + 2 * len(_ls(f"{path}/_manifests/tags"))
            elif child == "_layers":
                n += 1 + len(_ls(f"{path}/_layers"))
            elif child == "_uploads":
                n += 1
            elif not child.startswith("_"):
                stack.append(f"{path}/{child}")
    return n


def inotify_limit() -> int | None:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _ls(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
