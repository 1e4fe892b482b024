"""Output for people (progress, summaries) and for scripts (JSON)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import orjson

from .gc import GcPlan, GcStats
from .sweep import SweepResult


def gc_json(plan: GcPlan, *, dry_run: bool, stats: GcStats | None) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "delete_untagged": plan.delete_untagged,
        "marked": len(plan.marked),
        "blobs": [{"digest": d, "size": s} for d, s in plan.blobs.items()],
        "manifests": [{"repository": r, "digest": d} for r, d in plan.manifests],
        "bytes": plan.bytes,
        "deleted": None if stats is None else {
            "blobs": stats.blobs_deleted,
            "bytes": stats.bytes_deleted,
            "manifests": stats.manifests_deleted,
            "layer_links": stats.layer_links_deleted,
        },
    }


def sweep_json(result: SweepResult) -> dict[str, Any]:
    return {
        "dry_run": result.dry_run,
        "blobs": [{"digest": d, "size": s} for d, s in result.blobs],
        "manifests": [{"repository": r, "digest": d} for r, d in result.manifests],
        "bytes": result.bytes,
        "layer_links": result.layer_links,
        "skipped": [{"digest": d, "reason": why} for d, why in result.skipped],
    }


def write_json(obj: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def write_lines(lines: Iterator[str]) -> None:
    """Write many lines with few syscalls: upstream's output has one line per reference."""
    out = sys.stdout
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= 4096:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")
    out.flush()


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; a no-op otherwise (logs and pipes stay clean)."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(transient=True, console=_stderr_console()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)
