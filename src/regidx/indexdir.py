"""Where the index lives: generations swapped in atomically, the writer lock, the filesystem check."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from typing import Iterator

from .errors import IndexError_
from .index import SCHEMA_VERSION, LmdbIndex

ENV_VAR = "REGIDX_INDEX_DIR"
# LMDB's locking and mmap do not work across hosts; inotify does not see other hosts' writes.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "ceph", "glusterfs", "fuse.glusterfs",
    "fuse.sshfs", "afs", "lustre", "gpfs", "fuse.s3fs", "fuse.rclone", "beegfs", "ocfs2", "gfs2",
})
TRUSTED = "trusted"


def default_index_dir(rootdirectory: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(rootdirectory), ".regidx", "index")


def resolve_index_dir(rootdirectory: str | os.PathLike[str], override: str | None) -> str:
    return override or os.environ.get(ENV_VAR) or default_index_dir(rootdirectory)


class IndexDir:
    """<dir>/CURRENT names the generation in use (<dir>/gen-<n>/, an LMDB environment).

    A rebuild writes a new generation beside the old one and then replaces CURRENT with a
    rename, so a crash at any point leaves the old index in use and intact.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def current_file(self) -> str:
        return os.path.join(self.path, "CURRENT")

    def current(self) -> str | None:
        try:
            with open(self.current_file) as f:
                name = f.read().strip()
        except FileNotFoundError:
            return None
        return os.path.join(self.path, name) if name else None

    def open(self, *, readonly: bool = False) -> LmdbIndex:
        """The current generation; an error that says what to run when there is none."""
        gen = self.current()
        if gen is None or not os.path.isdir(gen):
            raise IndexError_(f"{self.path}: no index yet; run `regidx index rebuild CONFIG` first")
        index = LmdbIndex(gen, readonly=readonly)
        with index.read() as txn:
            schema = txn.get_meta("schema")
        if schema != SCHEMA_VERSION.decode():
            index.close()
            raise IndexError_(f"{gen}: index schema {schema!r} is not {SCHEMA_VERSION.decode()!r}; "
                              "run `regidx index rebuild CONFIG`")
        return index

    def new_generation(self) -> str:
        os.makedirs(self.path, exist_ok=True)
        check_local_filesystem(self.path)
        gen = os.path.join(self.path, f"gen-{time.time_ns()}")
        os.mkdir(gen)
        return gen

    def switch(self, gen: str) -> None:
        """Make gen current (atomically), then remove every other generation."""
        tmp = self.current_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(os.path.basename(gen))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.current_file)
        _fsync_dir(self.path)
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.startswith("gen-") and path != gen:
                shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def lock(self, what: str, *, name: str = "lock", wait: bool = False) -> Iterator[None]:
        """An exclusive lock: `lock` is held by whatever rewrites the index or the tree (rebuild,
        sweep, restore; the daemon while it reconciles), `daemon.lock` by the one daemon."""
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(os.path.join(self.path, name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise IndexError_(f"{self.path}: index is in use by {holder}; try again when it is done") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({what})\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def daemon_running(self) -> bool:
        """Whether a daemon holds daemon.lock (and so keeps this index current)."""
        try:
            fd = os.open(os.path.join(self.path, "daemon.lock"), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    @property
    def fence_dir(self) -> str:
        return os.path.join(self.path, "fence")


def check_local_filesystem(path: str) -> None:
    fstype = filesystem_type(path)
    if fstype in NETWORK_FILESYSTEMS:
        raise IndexError_(f"{path}: is on a {fstype} filesystem; LMDB must live on a local filesystem "
                          f"(use --index-dir or {ENV_VAR} to put the index elsewhere)")


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding path, from /proc/self/mountinfo (longest mount point prefix)."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                mount = fields[4].replace("\\040", " ")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, fstype = mount, fields[sep + 1]
    except (OSError, ValueError):
        return ""
    return fstype


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
