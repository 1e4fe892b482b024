"""Time the index against the reference, side by side on the same trees.

Measures, each as a ratio against `docker-registry garbage-collect --dry-run` on the same tree:
- `regidx index rebuild` (wall time, peak RSS, index size);
- `regidx gc sweep --dry-run --grace 0` as a whole process, on the bench tree and on a tree 4x
  smaller with the same garbage (the sweep's cost must follow the garbage, not the tree);
- a real sweep into the trash (blobs per second), then `gc restore --all` and `index verify`,
  which leave the tree as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gc  # noqa: E402
import gen_tree  # noqa: E402


def prepare(root: Path, params: gen_tree.Params) -> Path:
    marker = root / "generated.json"
    if marker.exists() and json.loads(marker.read_text())["params"] == vars(params):
        print(f"reusing {root}", file=sys.stderr)
    else:
        report = gen_tree.generate(root, params, force=True)
        print(gen_tree.summary(report), file=sys.stderr)
        os.sync()
    return root / "config.yml"


def timed(argv: list[str], rounds: int, log: Path) -> tuple[float, float]:
    """Median wall seconds and max peak RSS (MiB) of `rounds` runs; stdout to a log, must exit 0."""
    runs = []
    for _ in range(rounds):
        with open(log, "wb") as out:
            r = bench_gc.run(argv, out, subprocess.STDOUT)
        if r.exit_code != 0:
            sys.exit(f"{' '.join(argv)} exited {r.exit_code}; see {log}")
        runs.append(r)
    return statistics.median(r.seconds for r in runs), max(r.maxrss_mb for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/regidx-bench"))
    parser.add_argument("--regidx-cmd", default="regidx")
    parser.add_argument("--reference-cmd", default="docker-registry")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small trees, for a self-check")
    args = parser.parse_args()
    big = gen_tree.PRESETS["small" if args.quick else "bench"]
    # The same garbage, a quarter of everything else.
    quarter = replace(big, repos=max(big.repos // 4, 5), images=big.images // 4)
    regidx = shlex.split(args.regidx_cmd)
    reference = shlex.split(args.reference_cmd)
    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    sweeps = {}
    for name, params in (("bench", big), ("quarter", quarter)):
        base = "small" if args.quick else "bench"
        config = prepare(args.workdir / (base if name == "bench" else f"{base}-quarter"), params)
        # Warm the page cache, untimed, for both.
        timed([*reference, "garbage-collect", "--dry-run", str(config)], 1, logs / "warm-ref.log")
        ref_s, ref_rss = timed([*reference, "garbage-collect", "--dry-run", str(config)], args.rounds, logs / "ref.log")
        reb_s, reb_rss = timed([*regidx, "index", "rebuild", str(config)], args.rounds, logs / "rebuild.log")
        sw_s, sw_rss = timed([*regidx, "gc", "sweep", "--dry-run", "--grace", "0", str(config)],
                             args.rounds, logs / "sweep.log")
        swept = (logs / "sweep.log").read_text().splitlines()[-1]
        sweeps[name] = sw_s
        rows.append((name, "reference garbage-collect --dry-run", ref_s, 1.0, ref_rss))
        rows.append((name, "regidx index rebuild", reb_s, reb_s / ref_s, reb_rss))
        rows.append((name, f"regidx gc sweep --dry-run --grace 0 ({swept})", sw_s, sw_s / ref_s, sw_rss))
        if name == "bench":
            index_size = sum(f.stat().st_blocks * 512 for f in (config.parent / ".regidx" / "index").rglob("*.mdb"))
            real_s, _ = timed([*regidx, "gc", "sweep", "--grace", "0", str(config)], 1, logs / "real-sweep.log")
            removed = int((logs / "real-sweep.log").read_text().splitlines()[-1].split()[1])
            rest_s, _ = timed([*regidx, "gc", "restore", "--all", str(config)], 1, logs / "restore.log")
            timed([*regidx, "index", "verify", str(config)], 1, logs / "verify.log")
    print("| tree | command | median s | ratio to reference | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, what, s, ratio, rss in rows:
        print(f"| {name} | {what} | {s:.2f} | {ratio:.3f} | {rss:.0f} |")
    print()
    print(f"index size on the bench tree: {index_size / 2**20:.0f} MiB on disk")
    print(f"real sweep into the trash: {removed} blobs in {real_s:.2f} s = {removed / real_s:.0f} blobs/s; "
          f"restore --all {rest_s:.2f} s; index verify clean afterwards")
    change = (sweeps["bench"] - sweeps["quarter"]) / sweeps["quarter"]
    print(f"sweep time, bench tree vs a tree 4x smaller with the same garbage: {change:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
