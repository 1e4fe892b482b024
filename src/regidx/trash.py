"""The trash: swept blobs are moved here (a rename on the same filesystem) so that a sweep can be undone."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Iterator

import orjson

from .errors import StorageError
from .layout import Layout, check_digest


def default_trash_dir(rootdirectory: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(rootdirectory), ".regidx", "trash")


@dataclass(frozen=True)
class TrashEntry:
    digest: str
    size: int
    trashed_at: float
    # Repositories whose _layers link to the blob the sweep removed with it.
    layer_links: tuple[str, ...]
    path: str

    @property
    def has_data(self) -> bool:
        return os.path.exists(os.path.join(self.path, "blob", "data"))


class Trash:
    """<trash>/<alg>-<hex>/record.json (what, when, which links) and <trash>/<alg>-<hex>/blob/ (the blob dir).

    The record is written before the blob moves, so a crash between the two leaves a record
    without data (ignored and purged), never data without a record.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def entry_dir(self, digest: str) -> str:
        return os.path.join(self.path, check_digest(digest, "trash").replace(":", "-"))

    def put(self, layout: Layout, digest: str, size: int, layer_links: list[str], now: float) -> None:
        entry = self.entry_dir(digest)
        if os.path.exists(entry):
            shutil.rmtree(entry)  # trashed before, restored, now trashed again
        os.makedirs(entry)
        record = {"digest": digest, "size": size, "trashed_at": now, "layer_links": layer_links}
        with open(os.path.join(entry, "record.json"), "wb") as f:
            f.write(orjson.dumps(record))
        try:
            os.rename(layout.blob_dir(digest), os.path.join(entry, "blob"))
        except FileNotFoundError:
            pass  # already gone (an earlier, interrupted sweep): the record says so harmlessly
        except OSError as e:
            raise StorageError(f"{layout.blob_dir(digest)}: cannot move to trash: {e.strerror}") from None

    def get(self, digest: str) -> TrashEntry | None:
        return self._read(self.entry_dir(digest))

    def entries(self) -> Iterator[TrashEntry]:
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return
        for name in names:
            entry = self._read(os.path.join(self.path, name))
            if entry is not None:
                yield entry

    def remove(self, entry: TrashEntry) -> None:
        shutil.rmtree(entry.path, ignore_errors=True)

    def purge(self, older_than: float, *, dry_run: bool = False) -> list[TrashEntry]:
        """Delete the entries trashed at least older_than seconds ago; returns them."""
        now = time.time()
        old = [e for e in self.entries() if now - e.trashed_at >= older_than]
        if not dry_run:
            for entry in old:
                self.remove(entry)
        return old

    def take_back(self, layout: Layout, entry: TrashEntry) -> bool:
        """Move the blob back under blobs/; False when the registry already has it again."""
        target = layout.blob_dir(entry.digest)
        if os.path.exists(os.path.join(target, "data")):
            return False
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(target):
            os.rmdir(target)  # an empty directory left behind
        try:
            os.rename(os.path.join(entry.path, "blob"), target)
        except OSError as e:
            raise StorageError(f"{entry.path}: cannot restore blob: {e.strerror}") from None
        return True

    def _read(self, entry_dir: str) -> TrashEntry | None:
        try:
            with open(os.path.join(entry_dir, "record.json"), "rb") as f:
                record = orjson.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as e:
            raise StorageError(f"{entry_dir}/record.json: unreadable trash record: {e}") from None
        return TrashEntry(record["digest"], record["size"], record["trashed_at"],
                          tuple(record["layer_links"]), entry_dir)
