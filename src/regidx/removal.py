"""Removing things from the storage tree the way the registry's own deletes leave it."""

from __future__ import annotations

import os
import shutil

from .errors import StorageError
from .layout import Layout


def rmtree(path: str) -> None:
    """Remove a directory tree; gone already is fine, a symbolic link is refused."""
    if os.path.islink(path):
        raise StorageError(f"{path}: is a symbolic link; refusing to delete through it")
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StorageError(f"{e.filename or path}: cannot delete: {e.strerror}") from None


def remove_layer_link(layout: Layout, repo: str, digest: str) -> bool:
    """Remove _layers/<alg>/<hex>/link and then its directory if empty; True if a link file went."""
    link_dir = layout.layer_link_dir(repo, digest)
    removed = False
    try:
        os.unlink(os.path.join(link_dir, "link"))
        removed = True
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StorageError(f"{link_dir}/link: cannot remove layer link: {e.strerror}") from None
    try:
        os.rmdir(link_dir)
    except OSError:
        pass  # not empty (a concurrent re-link) or already gone: leave it
    return removed


def remove_revision(layout: Layout, repo: str, digest: str) -> None:
    """What upstream's vacuum does for an untagged manifest: its entry in every tag's index, then the revision."""
    tags_dir = layout.tags_dir(repo)
    try:
        tags = sorted(os.listdir(tags_dir))
    except FileNotFoundError:
        tags = []
    for tag in tags:
        rmtree(layout.tag_index_dir(repo, tag, digest))
    rmtree(layout.revision_dir(repo, digest))
