"""The daemon, measured: startup (watches, reconcile vs a full rebuild), events per second, and the lag
from a write in the tree to its index commit under a sustained push load through a real registry.

    python tools/bench_daemon.py [--tree /var/tmp/regidx-bench/bench] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from regidx.daemon import wait_for_fence  # noqa: E402
from regidx.indexdir import IndexDir, default_index_dir  # noqa: E402
from support.client import RegistryClient, layer_bytes, push_image  # noqa: E402
from support.registry import RegistryServer, _free_port  # noqa: E402

REGIDX = [sys.executable, "-m", "regidx.cli"]


def start_daemon(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*REGIDX, "-v", "daemon", *extra, str(config)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)


def wait_log(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 1800) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            sys.exit(f"daemon exited {proc.returncode}: {log.read_text()[-500:]}")
        time.sleep(0.05)
    sys.exit(f"daemon never logged {pattern!r}; see {log}")


def ensure_watch_limit(needed: int) -> None:
    """The benchmark tree needs more inotify watches than many kernels allow by default."""
    path = Path("/proc/sys/fs/inotify/max_user_watches")
    if int(path.read_text()) < needed:
        try:
            path.write_text(str(needed))
        except OSError:
            sys.exit(f"raise fs.inotify.max_user_watches to {needed} first (sysctl -w ...)")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def startup(tree: Path, work: Path) -> None:
    config = tree / "config.yml"
    ensure_watch_limit(1_000_000)
    started = time.monotonic()
    subprocess.run([*REGIDX, "index", "rebuild", str(config)], check=True, stdout=subprocess.DEVNULL)
    rebuild = time.monotonic() - started
    log = work / "daemon-startup.log"
    proc = start_daemon(config, log)
    watching = wait_log(log, r"watching (\d+) directories \(([\d.]+)s\)", proc)
    reconciled = wait_log(log, r"index reconciled: .* ([\d.]+)s\n", proc)
    total = time.monotonic() - started - rebuild
    # Events per second: a burst written straight into the tree the way a push writes (links after data).
    index_dir = IndexDir(default_index_dir(tree))
    n = 2000
    t0 = time.monotonic()
    written = burst_write(tree, n)
    wait_for_fence(index_dir, 600)
    burst = time.monotonic() - t0
    rss = peak_rss_mb(proc.pid)
    stop(proc)
    for path in written:  # leave the benchmark tree as it was (the index is rebuilt by the next user)
        shutil.rmtree(path, ignore_errors=True)
    print(f"| startup: watches placed | {watching.group(1)} watches in {float(watching.group(2)):.1f} s |")
    print(f"| startup: reconcile (full scan into a new generation) | {float(reconciled.group(1)):.1f} s |")
    print(f"| `index rebuild` of the same tree | {rebuild:.1f} s |")
    print(f"| reconcile / rebuild | {float(reconciled.group(1)) / rebuild:.2f} |")
    print(f"| daemon start to ready, all in | {total:.1f} s |")
    print(f"| burst of {n} images written into the tree ({n * 5} records), applied in | {burst:.2f} s "
          f"= {n * 5 / burst:.0f} records/s |")
    print(f"| daemon peak RSS | {rss:.0f} MiB |")


def burst_write(tree: Path, n: int) -> list[Path]:
    """n new images in a scratch repository, written in the registry's order: blob data, layer link,
    manifest data, revision link, tag. Returns what it created."""
    import hashlib
    import json

    v2 = tree / "docker/registry/v2"
    repo = v2 / "repositories" / f"bench-burst-{time.time_ns()}"
    created = [repo]

    def blob(data: bytes) -> str:
        hex_ = hashlib.sha256(data).hexdigest()
        d = v2 / "blobs/sha256" / hex_[:2] / hex_
        d.mkdir(parents=True, exist_ok=True)
        created.append(d)
        (d / "data").write_bytes(data)
        return hex_

    def link(path: Path, hex_: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "link").write_text(f"sha256:{hex_}")

    for i in range(n):
        layer = blob(f"burst layer {i} {time.time_ns()}".encode())
        link(repo / "_layers/sha256" / layer, layer)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                               "config": {"mediaType": "x", "digest": f"sha256:{layer}", "size": 1},
                               "layers": [{"mediaType": "x", "digest": f"sha256:{layer}", "size": 1}]}).encode()
        m = blob(manifest)
        link(repo / "_manifests/revisions/sha256" / m, m)
        link(repo / "_manifests/tags" / f"t{i}" / "index/sha256" / m, m)
        link(repo / "_manifests/tags" / f"t{i}" / "current", m)
    return created


def lag_under_pushes(work: Path, seconds: float) -> None:
    """A real registry taking pushes from 2 threads; the daemon's lag histogram afterwards."""
    port = _free_port()
    with RegistryServer(work / "lag-root", workdir=work) as registry:
        proc = start_daemon(registry.config_path, work / "daemon-lag.log", "--metrics-addr", f"127.0.0.1:{port}")
        wait_log(work / "daemon-lag.log", r"index reconciled", proc)
        stop_at = time.monotonic() + seconds
        pushes = [0]

        def pusher(k: int) -> None:
            with RegistryClient(registry.url) as c:
                i = 0
                while time.monotonic() < stop_at and i < 100_000:
                    i += 1
                    push_image(c, f"load/{k}", tag=f"t{i % 20}", layers=[layer_bytes(f"{k}-{i}", 512)])
                    pushes[0] += 1

        threads = [threading.Thread(target=pusher, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for_fence(IndexDir(default_index_dir(registry.root)), 120)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        stop(proc)
    buckets = [(float(le), float(v)) for le, v in
               re.findall(r'regidx_event_lag_seconds_bucket\{le="([^"+]+)"\} ([\d.e+]+)', metrics)]
    total = float(re.search(r"regidx_event_lag_seconds_count ([\d.e+]+)", metrics).group(1))
    events = float(re.search(r"regidx_events_applied_total ([\d.e+]+)", metrics).group(1))

    def quantile(q: float) -> str:
        for le, count in buckets:
            if count >= q * total:
                return f"≤ {le * 1000:.0f} ms"
        return "> 10 s"

    print(f"| sustained pushes through the registry | {pushes[0]} pushes in {seconds:.0f} s, {events:.0f} records, "
          f"{total:.0f} things re-read |")
    print(f"| lag from an event to its index commit | p50 {quantile(0.5)}, p99 {quantile(0.99)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path("/var/tmp/regidx-bench/bench"))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/regidx-bench/daemon"))
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print("| measure | value |")
    print("|---|---|")
    startup(args.tree, args.work)
    lag_under_pushes(args.work, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
