"""Run `regidx daemon` as a real process for tests, and wait for it without sleeping blindly."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from regidx.daemon import wait_for_fence
from support.registry import _die_with_parent
from regidx.indexdir import IndexDir, default_index_dir


_LIVE: set[DaemonProcess] = set()


@atexit.register
def _stop_all() -> None:
    for d in list(_LIVE):
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()


class DaemonProcess:
    def __init__(self, config: Path, root: Path, log: Path, *args: str) -> None:
        self.config, self.root, self.log_path, self.args = config, root, log, args
        self.index_dir = IndexDir(default_index_dir(root))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> DaemonProcess:
        self.log = open(self.log_path, "ab")
        since = self.log.tell()
        self.proc = subprocess.Popen([sys.executable, "-m", "regidx.cli", "-v", "daemon", *self.args, str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        _LIVE.add(self)
        if wait:
            self.wait_for_log("index reconciled", since=since)
        return self

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, since: int = 0, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.read_log()[since:]:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.read_log()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"daemon log never said {text!r}:\n{self.read_log()[-3000:]}")

    def fence(self, timeout: float = 60) -> None:
        wait_for_fence(self.index_dir, timeout)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    @contextmanager
    def proc_paused(self) -> Iterator[None]:
        """SIGSTOP the daemon meanwhile: events pile up in the kernel's queue."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Whatever happened in the test: no daemon outlives it."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        _LIVE.discard(self)
