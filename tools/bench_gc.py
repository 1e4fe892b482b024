"""Time regidx garbage-collect against docker-registry garbage-collect on the same synthetic tree."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_tree  # noqa: E402

SUMMARY = re.compile(rb"(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion")


@dataclass(frozen=True)
class Run:
    seconds: float
    maxrss_mb: float
    exit_code: int


def prepare_tree(root: Path, preset: str) -> dict:
    """Reuse ROOT if its generated.json records the same parameters; otherwise generate it again."""
    params = gen_tree.PRESETS[preset]
    marker = root / "generated.json"
    if marker.exists():
        report = json.loads(marker.read_text())
        if report["params"] == asdict(params) and report["generator_version"] == gen_tree.GENERATOR_VERSION:
            print(f"reusing {root} (generated {report['created']})", file=sys.stderr)
            return report
        print(f"{root} was generated with other parameters: regenerating", file=sys.stderr)
    report = gen_tree.generate(root, params, force=True)
    print(gen_tree.summary(report), file=sys.stderr)
    os.sync()  # gigabytes of writeback would otherwise land on the timed runs
    return report


def run(argv: list[str], stdout: int | object, stderr: int | object) -> Run:
    """Wall time and peak RSS of one child, from wait4's rusage (children of the child included)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
    return Run(seconds, usage.ru_maxrss / 1024, proc.returncode)


def gc_argv(command: str, config: Path, untagged: bool) -> list[str]:
    return [*shlex.split(command), "garbage-collect", "--dry-run",
            *(["--delete-untagged"] if untagged else []), str(config)]


def read_summary(path: Path) -> tuple[int, int, int] | None:
    match = SUMMARY.search(path.read_bytes())
    return tuple(int(g) for g in match.groups()) if match else None


def bench_mode(commands: dict[str, str], config: Path, logs: Path, mode: str, rounds: int) -> dict:
    untagged = mode == "untagged"
    argvs = {name: gc_argv(cmd, config, untagged) for name, cmd in commands.items()}
    result: dict = {"runs": {name: [] for name in commands}, "summary": {}, "warmup": {}}
    # The untimed warm-up fills the page cache and keeps the full output for the summary line.
    for name, argv in argvs.items():
        out, err = logs / f"{mode}-{name}.out", logs / f"{mode}-{name}.err"
        with out.open("wb") as o, err.open("wb") as e:
            warm = run(argv, o, e)
        result["warmup"][name] = warm
        result["summary"][name] = read_summary(out) or read_summary(err)
        print(f"{mode} {name} warm-up: {warm.seconds:.1f} s, exit {warm.exit_code}", file=sys.stderr)
    names = list(argvs)
    for i in range(rounds):
        # alternate who goes first, so drift on a noisy machine hits both alike
        for name in names if i % 2 == 0 else names[::-1]:
            with (logs / f"{mode}-{name}.timed.err").open("wb") as e:
                r = run(argvs[name], subprocess.DEVNULL, e)
            result["runs"][name].append(r)
            print(f"{mode} {name} round {i + 1}: {r.seconds:.1f} s, {r.maxrss_mb:.0f} MB, exit {r.exit_code}",
                  file=sys.stderr)
    return result


def print_report(results: dict[str, dict], report: dict) -> bool:
    print("| mode | reference median s | regidx median s | ratio (regidx/reference) "
          "| reference peak RSS MB | regidx peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, res in results.items():
        ref, new = res["runs"]["reference"], res["runs"]["regidx"]
        ref_s, new_s = statistics.median(r.seconds for r in ref), statistics.median(r.seconds for r in new)
        print(f"| {mode} | {ref_s:.2f} | {new_s:.2f} | {new_s / ref_s:.2f} "
              f"| {max(r.maxrss_mb for r in ref):.0f} | {max(r.maxrss_mb for r in new):.0f} |")
    print()
    print("| mode | source | blobs marked | blobs eligible | manifests eligible | exit codes |")
    print("|---|---|---:|---:|---:|---|")
    ok = True
    for mode, res in results.items():
        gc = report["gc"][mode]
        print(f"| {mode} | generator (2.8.2 rules) | {gc['marked']} | {gc['blobs_eligible']} "
              f"| {gc['manifests_eligible']} | |")
        for name in ("reference", "regidx"):
            summary = res["summary"][name]
            codes = {r.exit_code for r in [res["warmup"][name], *res["runs"][name]]}
            cells = " | ".join(str(n) for n in summary) if summary else "no summary line | | "
            print(f"| {mode} | {name} | {cells} | {','.join(map(str, sorted(codes)))} |")
            ok = ok and codes == {0}
        ref, new = res["summary"]["reference"], res["summary"]["regidx"]
        if mode == "plain":
            ok = ok and ref is not None and ref == new
        else:
            # regidx keeps index children and referrers that 2.8.2 deletes (docs/compatibility.md):
            # it may only ever delete less.
            ok = ok and ref is not None and new is not None and new[1] <= ref[1] and new[2] <= ref[2]
    print()
    print("plain counts equal, untagged deletes no more than the reference, all runs exited 0" if ok
          else "MISMATCH: counts differ or a run failed (see logs)")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", choices=sorted(gen_tree.PRESETS), default="bench")
    parser.add_argument("--workdir", type=Path, help="tree location (default /var/tmp/regidx-bench/<preset>)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each command per mode")
    parser.add_argument("--modes", default="plain", help="comma list of plain, untagged")
    parser.add_argument("-m", "--delete-untagged", action="store_true", help="also run the untagged mode")
    parser.add_argument("--regidx-cmd", default="regidx", help="command under test (shell words)")
    parser.add_argument("--reference-cmd", default="docker-registry")
    args = parser.parse_args(argv)

    modes = args.modes.split(",") + (["untagged"] if args.delete_untagged else [])
    modes = list(dict.fromkeys(modes))
    if set(modes) - {"plain", "untagged"}:
        parser.error(f"unknown mode in {modes}")
    root = (args.workdir or Path("/var/tmp/regidx-bench") / args.preset).resolve()
    report = prepare_tree(root, args.preset)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    commands = {"reference": args.reference_cmd, "regidx": args.regidx_cmd}
    c = report["counts"]
    print(f"tree {root}: {c['repos']} repos, {c['images']} images, {c['blobs']} blobs; "
          f"rounds {args.rounds}; load average {os.getloadavg()[0]:.2f}; logs in {logs}")
    print(f"reference: {args.reference_cmd}; regidx: {args.regidx_cmd}")
    print()
    results = {mode: bench_mode(commands, root / "config.yml", logs, mode, args.rounds) for mode in modes}
    return 0 if print_report(results, report) else 1


if __name__ == "__main__":
    sys.exit(main())
