"""Run the real docker-registry (serve and garbage-collect) for tests."""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

REGISTRY_BIN = os.environ.get("REGIDX_REGISTRY_BIN", "/usr/bin/docker-registry")

# Every server started and not yet stopped, so that an interpreter exit never leaks one.
_LIVE: set[RegistryServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def _die_with_parent() -> None:
    # Runs in the child before exec: ask the kernel to SIGKILL it when we die, even by SIGKILL
    # (atexit does not run then). Caveat: "we" is the starting thread, so start servers from
    # a thread that outlives them (pytest's main thread does).
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class RegistryServer:
    """`docker-registry serve` on 127.0.0.1 with filesystem storage under `root`.

    Config and log files go to `workdir` (a fresh temp dir if not given). The port (free one
    if not given) is kept across restart(), so `url` and clients built on it stay valid.
    `extra_config` is merged into the generated config (nested dicts merge, rest replaces).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        workdir: Path | str | None = None,
        cache: Literal["inmemory", "redis"] | None = "inmemory",
        redis_addr: str | None = None,
        log_level: str = "warn",
        extra_config: dict[str, Any] | None = None,
        port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        if cache == "redis" and not redis_addr:
            raise ValueError("cache='redis' needs redis_addr")
        self.root = Path(root).resolve()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="regidx-registry-")).resolve()
        self.config_path = self.workdir / "registry-config.yml"
        self.log_path = self.workdir / "registry.log"
        self.cache = cache
        self.redis_addr = redis_addr
        self.log_level = log_level
        self.extra_config = extra_config or {}
        self.start_timeout = start_timeout
        self._auto_port = port is None
        self.port = port or _free_port()
        self._started_once = False
        self._instance = uuid.uuid4().hex
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        storage: dict[str, Any] = {
            "filesystem": {"rootdirectory": str(self.root)},
            "delete": {"enabled": True},
        }
        if self.cache:
            storage["cache"] = {"blobdescriptor": self.cache}
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": self.log_level, "accesslog": {"disabled": True}},
            "storage": storage,
            # A fixed secret: the default random one makes uploads unresumable across restart().
            "http": {
                "addr": f"127.0.0.1:{self.port}",
                "secret": "regidx-test-secret",
                # Lets _wait_ready tell our process from another one answering on the port.
                "headers": {"X-Regidx-Instance": [self._instance]},
            },
            # 2.8.2 validates foreign-layer URLs by default against an empty allow-list, which
            # allows nothing; allow http(s) so manifests with foreign layers can be pushed.
            "validation": {"manifests": {"urls": {"allow": ["^https?://"]}}},
        }
        if self.cache == "redis":
            cfg["redis"] = {"addr": self.redis_addr}
        return _merge(cfg, json.loads(json.dumps(self.extra_config)))

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML, and the registry's YAML parser reads it.
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        return self.config_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RegistryServer:
        if self.running:
            return self
        if not Path(REGISTRY_BIN).exists():
            raise FileNotFoundError(f"{REGISTRY_BIN} not found")
        for attempt in range(3):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn()
            try:
                self._wait_ready()
                self._started_once = True
                return self
            except RuntimeError:
                self.stop()
                # _free_port() is racy: another process may have taken the port meanwhile.
                # Pick another, unless the caller chose it or clients already use this url.
                lost_port = "address already in use" in self.read_log(log_offset)
                if not (lost_port and self._auto_port and not self._started_once and attempt < 2):
                    raise
                self.port = _free_port()
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self._instance = uuid.uuid4().hex
        self.write_config()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        _LIVE.add(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited with {self._proc.returncode} at start "
                    f"(config {self.config_path}, log {self.log_path}):\n{self.read_log()}"
                )
            try:
                r = httpx.get(f"{self.url}/v2/", timeout=0.5)
                if r.status_code == 200 and r.headers.get("X-Regidx-Instance") == self._instance:
                    return
            except httpx.TransportError as e:
                last_error = e
            time.sleep(0.02)
        raise RuntimeError(
            f"docker-registry not answering GET {self.url}/v2/ after {self.start_timeout}s "
            f"({last_error!r}; config {self.config_path}, log {self.log_path}):\n{self.read_log()}"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> RegistryServer:
        """Stop and start on the same port: also the only way to clear the inmemory cache."""
        self.stop()
        return self.start()

    def read_log(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RegistryServer({self.url}, root={self.root}, running={self.running})"


# --- upstream garbage-collect ---------------------------------------------------------------

_ELIGIBLE_BLOB = re.compile(r"^blob eligible for deletion: (\S+)\s*$", re.M)
_ELIGIBLE_MANIFEST = re.compile(r"^manifest eligible for deletion: (\S+)\s*$", re.M)
_MARK = re.compile(r"^(\S.*): marking (manifest|blob) (\S+)\s*$", re.M)
_SUMMARY = re.compile(
    r"^(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion\s*$", re.M
)


@dataclass(kw_only=True)
class GCReport:
    """What a garbage-collect run printed. Counts are None when the summary line is absent."""

    eligible_blobs: set[str] = field(default_factory=set)
    eligible_manifests: set[str] = field(default_factory=set)
    marked_manifests: set[str] = field(default_factory=set)
    marked_blobs: set[str] = field(default_factory=set)  # configs, layers and index children
    marked_count: int | None = None
    blob_count: int | None = None
    manifest_count: int | None = None

    @property
    def marked(self) -> set[str]:
        """Every marked digest; its size is what the summary calls "blobs marked"."""
        return self.marked_manifests | self.marked_blobs


@dataclass(kw_only=True)
class UpstreamGC(GCReport):
    returncode: int
    stdout: str
    stderr: str


def parse_gc_output(text: str) -> GCReport:
    """Parse the stdout of `registry garbage-collect` (2.8.2 format; v3 extra lines ignored)."""
    report = GCReport(
        eligible_blobs=set(_ELIGIBLE_BLOB.findall(text)),
        eligible_manifests=set(_ELIGIBLE_MANIFEST.findall(text)),
    )
    for _repo, kind, digest in _MARK.findall(text):
        (report.marked_manifests if kind == "manifest" else report.marked_blobs).add(digest)
    if m := _SUMMARY.search(text):
        report.marked_count, report.blob_count, report.manifest_count = map(int, m.groups())
    return report


def run_upstream_gc(
    config_path: Path | str,
    *,
    delete_untagged: bool = False,
    dry_run: bool = True,
    check: bool = True,
    timeout: float = 300.0,
) -> UpstreamGC:
    """Run `docker-registry garbage-collect`; with check, raise unless it exited 0."""
    cmd = [REGISTRY_BIN, "garbage-collect"]
    if dry_run:
        cmd.append("--dry-run")
    if delete_untagged:
        cmd.append("--delete-untagged")
    cmd.append(str(config_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    report = parse_gc_output(proc.stdout)
    return UpstreamGC(
        **vars(report), returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr
    )
