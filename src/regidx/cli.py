"""The `regidx` command line: parse, call, print. The only module that imports click."""

from __future__ import annotations

import logging
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import click

from . import __version__
from .cache import forget_deleted_blobs, run_after_sweep
from .config import Config, load_config
from .errors import IndexError_, RegidxError, UsageError
from .gc import apply_plan, iter_report_lines, plan_gc
from .indexdir import ENV_VAR, IndexDir, resolve_index_dir
from .layout import Layout, check_digest
from .rebuild import rebuild_index, verify_index
from .records import UploadRemoved
from .removal import rmtree
from .scan import find_repositories, scan_storage
from .sweep import check_trusted, find_changes, forget_repository_dirs, restore, sweep
from .report import gc_json, human_bytes, progress, sweep_json, write_json, write_lines
from .trash import Trash, TrashEntry, default_trash_dir
from .uploads import StaleUpload, find_empty_repositories, find_stale_uploads, remove_empty_repository

log = logging.getLogger("regidx")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Duration(click.ParamType):
    """24h, 90m, 7d, 1h30m, 0: a number of seconds."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        if text in {"0", "0s"}:
            return 0.0
        match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)([smhdw]))+", text)
        if not match:
            self.fail(f"{value!r} is not a duration (examples: 0, 30s, 90m, 24h, 7d, 1h30m)", param, ctx)
        return float(sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)))


DURATION = Duration()


@dataclass
class Context:
    config: Config
    layout: Layout
    index_dir: IndexDir

    @property
    def trash(self) -> Trash:
        return Trash(default_trash_dir(self.config.rootdirectory))


def _load(config_path: str, index_dir: str | None = None) -> Context:
    config = load_config(config_path)
    return Context(config, Layout(config.rootdirectory),
                   IndexDir(resolve_index_dir(config.rootdirectory, index_dir)))


def _index_dir_option(f):  # type: ignore[no-untyped-def]
    return click.option("--index-dir", type=click.Path(file_okay=False), default=None,
                        help=f"Where the index lives (default <rootdirectory>/.regidx/index; env {ENV_VAR}).")(f)


class RegidxGroup(click.Group):
    """Turns our own errors into one line on stderr and an exit code; real bugs keep their traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except RegidxError as e:
            click.echo(f"regidx: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("regidx: interrupted", err=True)
            sys.exit(130)


@click.group(cls=RegidxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="regidx")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """Incremental, online garbage collection for Docker/OCI registries (filesystem storage)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)


@main.command("garbage-collect")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-d", "--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("-m", "--delete-untagged", is_flag=True,
              help="Also delete manifests no tag points at (keeping index children and referrers of kept ones).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the per-repository marking lines.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the upstream text.")
def garbage_collect(config: str, dry_run: bool, delete_untagged: bool, quiet: bool, as_json: bool) -> None:
    """Stop-the-world mark and sweep, a drop-in for `registry garbage-collect`.

    Reads every manifest of every repository, then deletes every blob nothing marked. Run it with
    the registry stopped or read-only, as upstream requires. Nothing is deleted unless the whole
    mark phase succeeded.
    """
    ctx = _load(config)
    with _repo_progress(ctx, "marking") as advance:
        scan = scan_storage(ctx.layout, read_tags=delete_untagged, read_layers=not dry_run, progress=advance)
    plan = plan_gc(ctx.layout, scan, delete_untagged=delete_untagged)
    if not as_json:
        write_lines(iter_report_lines(scan, plan, quiet=quiet))
    stats = None
    if not dry_run:
        with progress("deleting", len(plan.blobs)) as advance:
            stats = apply_plan(ctx.layout, scan, plan, progress=advance)
        _after_deleting(ctx, stats.linked_from.items(), None)
        click.echo(f"regidx: deleted {stats.blobs_deleted} blobs ({human_bytes(stats.bytes_deleted)}), "
                   f"{stats.manifests_deleted} manifests, {stats.layer_links_deleted} layer links", err=True)
    if as_json:
        write_json(gc_json(plan, dry_run=dry_run, stats=stats))


# --- index ---------------------------------------------------------------------------------------


@main.group()
def index() -> None:
    """Build or check the persistent index."""


@index.command("rebuild")
@click.argument("config", type=click.Path(dir_okay=False))
@_index_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def index_rebuild(config: str, index_dir: str | None, as_json: bool) -> None:
    """Full stop-the-world scan into a fresh index, swapped in atomically.

    The new index is written beside the old one; a crash leaves the old one in use. Run it
    with the registry stopped or read-only (or let `regidx daemon` keep the index current).
    """
    ctx = _load(config, index_dir)
    if ctx.index_dir.daemon_running():
        raise IndexError_(f"{ctx.index_dir.path}: a daemon keeps this index current; stop it to rebuild "
                          "(its startup reconciles the index with the tree anyway)")
    with ctx.index_dir.lock("index rebuild"), _repo_progress(ctx, "scanning") as advance:
        stats = rebuild_index(ctx.layout, ctx.index_dir, progress=advance)
    if as_json:
        write_json(vars(stats))
        return
    click.echo(f"indexed {stats.repositories} repositories, {stats.revisions} revisions, {stats.blobs} blobs "
               f"({stats.candidates} unreferenced) in {stats.seconds:.1f}s; "
               f"index {human_bytes(stats.index_bytes)} at {stats.path}")


@index.command("verify")
@click.argument("config", type=click.Path(dir_okay=False))
@_index_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the discrepancies as a JSON list.")
def index_verify(config: str, index_dir: str | None, as_json: bool) -> None:
    """Compare the index with a full scan of the tree.

    Exit status as diff(1): 0 when they agree, 1 when they differ (each difference is printed),
    2 on trouble.
    """
    ctx = _load(config, index_dir)
    with ctx.index_dir.open(readonly=True) as idx, _repo_progress(ctx, "scanning") as advance:
        found = verify_index(ctx.layout, idx, progress=advance)
    if as_json:
        write_json([vars(d) for d in found])
    else:
        for d in found:
            click.echo(str(d))
        if not found:
            click.echo("index agrees with the storage tree")
    sys.exit(1 if found else 0)


# --- daemon and status -------------------------------------------------------------------------


@main.command("daemon")
@click.argument("config", type=click.Path(dir_okay=False))
@_index_dir_option
@click.option("--poll", type=DURATION, default=None,
              help="Poll every INTERVAL instead of using inotify (NFS: inotify does not see other hosts' writes).")
@click.option("--metrics-addr", default=None, metavar="HOST:PORT", help="Serve Prometheus metrics here.")
@click.option("--sweep-every", type=DURATION, default=None, help="Sweep on this schedule (into the trash).")
@click.option("--grace", type=DURATION, default="24h", show_default=True, help="Grace period of scheduled sweeps.")
@click.option("-m", "--delete-untagged", is_flag=True, help="Scheduled sweeps also remove unreachable untagged manifests.")
@click.option("--verify-every", type=DURATION, default=None, help="Verify the index on this schedule.")
@click.option("--purge-trash-every", type=DURATION, default=None, help="Purge old trash entries on this schedule.")
@click.option("--trash-retention", type=DURATION, default="7d", show_default=True, help="What scheduled purges keep.")
def daemon_cmd(config: str, index_dir: str | None, poll: float | None, metrics_addr: str | None,
               sweep_every: float | None, grace: float, delete_untagged: bool, verify_every: float | None,
               purge_trash_every: float | None, trash_retention: float) -> None:
    """Keep the index equal to the storage tree, event by event, while the registry serves.

    Watches are placed first, then the index is reconciled with the tree (a full scan), then
    every change is applied as it happens. SIGTERM or SIGINT stop it cleanly. Logs go to stderr.
    """
    from .daemon import Daemon, Options  # watchdog and prometheus-client: only the daemon needs them

    ctx = _load(config, index_dir)
    logging.getLogger("regidx").setLevel(min(logging.getLogger("regidx").getEffectiveLevel(), logging.INFO))
    options = Options(poll=poll, metrics_addr=metrics_addr, sweep_every=sweep_every, verify_every=verify_every,
                      purge_trash_every=purge_trash_every, grace=grace, delete_untagged=delete_untagged,
                      trash_retention=trash_retention)
    Daemon(ctx.layout, ctx.index_dir, ctx.trash, options).run()


@main.command("status")
@click.argument("config", type=click.Path(dir_okay=False))
@_index_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status_cmd(config: str, index_dir: str | None, as_json: bool) -> None:
    """What the index holds, whether it is trusted, and whether a daemon keeps it current."""
    ctx = _load(config, index_dir)
    with ctx.index_dir.open(readonly=True) as idx:
        with idx.read() as txn:
            info = txn.summary()
            for key in ("state", "last_full_scan", "heartbeat"):
                info[key] = txn.get_meta(key)
        info["index"] = idx.path
        info["index_bytes"] = idx.size_bytes()
    info["daemon"] = ctx.index_dir.daemon_running()
    entries = list(ctx.trash.entries())
    info["trash"] = {"entries": len(entries), "bytes": sum(e.size for e in entries)}
    if as_json:
        write_json(info)
        return
    scan_time = time.ctime(float(info["last_full_scan"])) if info["last_full_scan"] else "never"
    click.echo(f"index       {info['index']} ({human_bytes(info['index_bytes'])}), {info['state']}")
    click.echo(f"daemon      {'running' if info['daemon'] else 'not running'}; last full scan {scan_time}")
    click.echo(f"blobs       {info['blobs']} ({human_bytes(info['bytes'])})")
    click.echo(f"candidates  {info['candidates']} unreferenced ({human_bytes(info['reclaimable_bytes'])} reclaimable)")
    click.echo(f"manifests   {info['revisions']} revisions, {info['untagged']} untagged; {info['tags']} tags")
    click.echo(f"trash       {info['trash']['entries']} entries ({human_bytes(info['trash']['bytes'])})")


# --- gc ------------------------------------------------------------------------------------------


@main.group()
def gc() -> None:
    """Sweep garbage using the index, and manage the trash."""


@gc.command("sweep")
@click.argument("config", type=click.Path(dir_okay=False))
@_index_dir_option
@click.option("-d", "--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option("-m", "--delete-untagged", is_flag=True,
              help="Also remove manifests no tag reaches (index children and referrers of kept ones stay).")
@click.option("--grace", type=DURATION, default="24h", show_default=True,
              help="Only remove what has been unreferenced (and untagged) for this long; 0 for stop-the-world use.")
@click.option("--no-trash", is_flag=True, help="Delete at once instead of moving blobs to the trash.")
@click.option("--after-sweep", metavar="CMD", default=None,
              help="Run CMD (a shell command, e.g. a registry restart) after a sweep that deleted something.")
@click.option("--fence-timeout", type=DURATION, default="60s", show_default=True,
              help="With a running daemon: how long to wait for it to apply every change made before the sweep.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def gc_sweep(config: str, index_dir: str | None, dry_run: bool, delete_untagged: bool, grace: float,
             no_trash: bool, after_sweep: str | None, fence_timeout: float, as_json: bool) -> None:
    """Remove unreferenced blobs, reading only the candidates from the index.

    With a running daemon, the sweep first waits until the daemon has applied every change made
    before it (the fence). Without one, it checks that nothing was added to the tree since the
    last full scan (docs/safety.md) and refuses otherwise. Blobs go to the trash
    (<rootdirectory>/.regidx/trash) unless --no-trash; `regidx gc restore` brings them back.
    """
    ctx = _load(config, index_dir)
    with ctx.index_dir.lock("gc sweep"):
        if ctx.index_dir.daemon_running():
            from .daemon import wait_for_fence

            wait_for_fence(ctx.index_dir, fence_timeout)
            changed = []
        else:
            with ctx.index_dir.open() as idx, idx.read() as txn:
                check_trusted(txn, ctx.layout)
                changed = find_changes(txn, ctx.layout, include_tags=delete_untagged)
        if changed:
            raise IndexError_(
                f"{len(changed)} director{'y' if len(changed) == 1 else 'ies'} changed since the last full scan "
                f"(first: {ctx.layout.v2}/{changed[0]}); the index may miss new references. "
                "Run `regidx index rebuild CONFIG` (registry stopped or read-only) or `regidx daemon CONFIG`"
            )
        with ctx.index_dir.open() as idx, progress("sweeping", None) as advance:
            result = sweep(idx, ctx.layout, None if no_trash else ctx.trash, dry_run=dry_run, grace=grace,
                           delete_untagged=delete_untagged, progress=advance)
    _after_deleting(ctx, result.linked_from.items(), after_sweep)
    if as_json:
        write_json(sweep_json(result))
        return
    verb = "would remove" if dry_run else "removed"
    for repo, digest in result.manifests:
        click.echo(f"manifest {verb}: {repo}@{digest}")
    for digest, size in result.blobs:
        click.echo(f"blob {verb}: {digest} ({human_bytes(size)})")
    for digest, why in result.skipped:
        click.echo(f"blob kept: {digest}: {why}")
    where = "" if dry_run or no_trash else " (into the trash)"
    click.echo(f"{verb} {len(result.blobs)} blobs, {human_bytes(result.bytes)}{where}, "
               f"and {len(result.manifests)} manifests")


@gc.command("restore")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("digests", nargs=-1)
@_index_dir_option
@click.option("--all", "restore_all", is_flag=True, help="Restore everything in the trash.")
def gc_restore(config: str, digests: tuple[str, ...], index_dir: str | None, restore_all: bool) -> None:
    """Put swept blobs back, with the layer links the sweep removed."""
    ctx = _load(config, index_dir)
    if bool(digests) == restore_all:
        raise UsageError("give DIGEST... or --all, not both or neither")
    trash = ctx.trash
    entries = list(trash.entries()) if restore_all else [_trash_entry(trash, d) for d in digests]
    with ctx.index_dir.lock("gc restore"), ctx.index_dir.open() as idx:
        for entry in entries:
            restored = restore(idx, ctx.layout, trash, entry)
            click.echo(f"{'restored' if restored else 'already present, dropped from trash'}: {entry.digest}")


@gc.command("purge")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--older-than", type=DURATION, default="7d", show_default=True,
              help="Delete trash entries older than this (0 empties the trash).")
@click.option("-d", "--dry-run", is_flag=True, help="Only list what would be deleted.")
def gc_purge(config: str, older_than: float, dry_run: bool) -> None:
    """Empty the trash of entries older than the retention period."""
    purged = _load(config).trash.purge(older_than, dry_run=dry_run)
    freed = sum(e.size for e in purged)
    click.echo(f"{'would purge' if dry_run else 'purged'} {len(purged)} trash entries, {human_bytes(freed)}")


@gc.command("uploads")
@click.argument("config", type=click.Path(dir_okay=False))
@_index_dir_option
@click.option("--older-than", type=DURATION, default="168h", show_default=True,
              help="Remove uploads started longer ago than this (by startedat, else the directory's mtime).")
@click.option("-d", "--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--prune-empty-repos", is_flag=True, help="Also remove repositories that hold nothing any more.")
def gc_uploads(config: str, index_dir: str | None, older_than: float, dry_run: bool, prune_empty_repos: bool) -> None:
    """Remove stale unfinished uploads, as the registry's own purger does; report empty repositories."""
    ctx = _load(config, index_dir)
    stale = find_stale_uploads(ctx.layout, older_than=older_than, now=time.time())
    empty = find_empty_repositories(ctx.layout)
    verb = "would remove" if dry_run else "removed"
    for upload in stale:
        click.echo(f"upload {verb}: {upload.repo} {upload.uuid} (started {time.ctime(upload.started)})")
        if not dry_run:
            rmtree(upload.path)
    pruned = []
    for repo in empty:
        if prune_empty_repos and not dry_run:
            remove_empty_repository(ctx.layout, repo)
            pruned.append(repo)
            click.echo(f"empty repository removed: {repo}")
        else:
            click.echo(f"empty repository: {repo}" + (" (would be removed)" if prune_empty_repos else ""))
    if not dry_run and (stale or pruned):
        _note_uploads_removed(ctx, stale, pruned)
    click.echo(f"{verb} {len(stale)} stale uploads; {len(empty)} empty repositories")


def _note_uploads_removed(ctx: Context, stale: list[StaleUpload], pruned: list[str]) -> None:
    """Keep an existing index in step with what we removed."""
    try:
        idx = ctx.index_dir.open()
    except IndexError_:
        return
    now = time.time()
    with idx, idx.write() as txn:
        for upload in stale:
            txn.apply(UploadRemoved(upload.repo, upload.uuid), now)
        for repo in pruned:
            forget_repository_dirs(txn, ctx.layout, repo)


def _after_deleting(ctx: Context, deleted: Iterable[tuple[str, list[str]]], after: str | None) -> None:
    """What the registry's blob-descriptor cache needs once blobs are gone behind its back."""
    deleted = list(deleted)
    if not deleted:
        return
    warning = forget_deleted_blobs(ctx.config, deleted)
    if after:
        run_after_sweep(after)
    elif warning:
        click.echo(f"regidx: warning: {warning}", err=True)


def _trash_entry(trash: Trash, digest: str) -> TrashEntry:
    entry = trash.get(check_digest(digest, "argument"))
    if entry is None:
        raise UsageError(f"{digest}: not in the trash ({trash.path})")
    return entry


@contextmanager
def _repo_progress(ctx: Context, what: str) -> Iterator[Callable[[int], None]]:
    total = len(find_repositories(ctx.layout)) if sys.stderr.isatty() else None
    with progress(what, total) as advance:
        yield advance


if __name__ == "__main__":  # pragma: no cover
    main()
