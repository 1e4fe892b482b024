"""The `regidx` command line: parse, call, print. The only module that imports click."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__
from .config import Config, load_config
from .errors import RegidxError
from .gc import apply_plan, iter_report_lines, plan_gc
from .layout import Layout
from .report import gc_json, human_bytes, progress, write_json, write_lines
from .scan import find_repositories, scan_storage

log = logging.getLogger("regidx")


@dataclass
class Context:
    config: Config
    layout: Layout


def _load(config_path: str) -> Context:
    config = load_config(config_path)
    return Context(config, Layout(config.rootdirectory))


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
    n_repos = len(find_repositories(ctx.layout)) if sys.stderr.isatty() else None
    with progress("marking", n_repos) as advance:
        scan = scan_storage(ctx.layout, read_tags=delete_untagged, progress=advance)
    plan = plan_gc(scan, delete_untagged=delete_untagged)
    if not as_json:
        write_lines(iter_report_lines(scan, plan, quiet=quiet))
    stats = None
    if not dry_run:
        with progress("deleting", len(plan.blobs)) as advance:
            stats = apply_plan(ctx.layout, scan, plan, progress=advance)
        log.warning(
            "deleted %d blobs (%s), %d manifests, %d layer links",
            stats.blobs_deleted, human_bytes(stats.bytes_deleted), stats.manifests_deleted, stats.layer_links_deleted,
        )
    if as_json:
        write_json(gc_json(plan, dry_run=dry_run, stats=stats))


if __name__ == "__main__":  # pragma: no cover
    main()
