"""Unfinished uploads and empty repositories: what the registry's own purger (and nobody else) cleans."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .layout import Layout
from .removal import rmtree
from .scan import find_repositories, read_startedat

_REPO_PARTS = ("_layers", "_manifests", "_uploads")


@dataclass(frozen=True)
class StaleUpload:
    repo: str
    uuid: str
    started: float  # from startedat, or the directory's mtime when that is missing
    path: str


def find_stale_uploads(layout: Layout, *, older_than: float, now: float) -> list[StaleUpload]:
    stale = []
    for repo in find_repositories(layout):
        uploads_dir = layout.uploads_dir(repo)
        try:
            names = sorted(os.listdir(uploads_dir))
        except FileNotFoundError:
            continue
        for uuid in names:
            path = os.path.join(uploads_dir, uuid)
            started = read_startedat(path) or _mtime(path)
            if now - started > older_than:
                stale.append(StaleUpload(repo, uuid, started, path))
    return stale


def find_empty_repositories(layout: Layout) -> list[str]:
    """Repositories with no revision link, tag, layer link or upload left: only empty directories."""
    return [repo for repo in find_repositories(layout) if not _has_files(layout, repo)]


def remove_empty_repository(layout: Layout, repo: str) -> None:
    """Remove its _ directories, then the repository directory and empty parents, if nothing else is there
    (a nested repository keeps its parent)."""
    base = layout.repo_dir(repo)
    for part in _REPO_PARTS:
        rmtree(os.path.join(base, part))
    path = base
    while path != layout.repositories:
        try:
            os.rmdir(path)
        except OSError:
            break  # not empty: a child repository or namespace lives here
        path = os.path.dirname(path)


def _has_files(layout: Layout, repo: str) -> bool:
    base = layout.repo_dir(repo)
    for part in _REPO_PARTS:
        for _, _, files in os.walk(os.path.join(base, part)):
            if files:
                return True
    return False


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0
