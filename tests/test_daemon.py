"""The daemon against a real registry taking pushes: the index stays equal to the tree."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from support.client import Image, RegistryClient, RegistryError, layer_bytes, pull_and_verify, push_image, push_index, push_referrer
from support.daemon import DaemonProcess
from support.registry import RegistryServer

pytestmark = pytest.mark.registry


def regidx(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "regidx.cli", *args], capture_output=True, text=True)
    if check is not None:
        assert result.returncode == check, result.stdout[-3000:] + result.stderr
    return result


@pytest.fixture
def daemon(registry: RegistryServer, tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(registry.config_path, registry.root, tmp_path / "daemon.log") as d:
        yield d


def assert_index_matches(registry: RegistryServer, daemon: DaemonProcess) -> None:
    """After a fence: verify is clean, and a grace-0 sweep would remove exactly what garbage-collect would."""
    daemon.fence()
    regidx("index", "verify", str(registry.config_path))
    sweep = json.loads(regidx("gc", "sweep", "--dry-run", "--grace", "0", "--json", str(registry.config_path)).stdout)
    gc = json.loads(regidx("garbage-collect", "--dry-run", "--json", str(registry.config_path)).stdout)
    assert {b["digest"] for b in sweep["blobs"]} == {b["digest"] for b in gc["blobs"]}


class RandomPusher:
    """Random pushes, retags, deletes and blob deletes through the HTTP API, from a seed."""

    def __init__(self, client: RegistryClient, seed: int) -> None:
        self.c = client
        self.rng = random.Random(seed)
        self.images: list[Image] = []
        self.n = 0

    def step(self) -> None:
        rng, c = self.rng, self.c
        repo = rng.choice(["app", "team/web", "team/web/api", "lib/base"])
        op = rng.random()
        self.n += 1
        if op < 0.45 or not self.images:
            layers = [layer_bytes(f"shared-{rng.randrange(6)}"), layer_bytes(f"own-{self.n}")]
            img = push_image(c, repo, tag=rng.choice([None, "latest", "v1", "v2"]), layers=layers,
                             oci=rng.random() < 0.3)
            self.images.append(img)
        elif op < 0.55:
            kids = [push_image(c, repo, layers=[layer_bytes(f"k{self.n}-{i}")]) for i in range(2)]
            self.images += [*kids, push_index(c, repo, tag=rng.choice(["multi", None]), children=kids)]
        elif op < 0.62:
            self.images.append(push_referrer(c, (s := rng.choice(self.images)).repo, s))
        elif op < 0.75:
            img = rng.choice(self.images)
            try:
                c.put_manifest(img.repo, rng.choice(["latest", "v1", "moved"]), img.manifest, img.media_type)
            except RegistryError:
                pass  # one of its layers was deleted through the API: the registry refuses, rightly
        elif op < 0.9:
            img = self.images.pop(rng.randrange(len(self.images)))
            try:
                c.delete_manifest(img.repo, img.digest)
            except Exception:  # noqa: BLE001 - deleted already (the same digest in two entries)
                pass
        else:
            img = rng.choice(self.images)
            if img.layer_digests:
                try:
                    c.delete_blob(img.repo, img.layer_digests[-1])
                except Exception:  # noqa: BLE001 - already deleted
                    pass


def test_index_follows_random_operations(registry: RegistryServer, client: RegistryClient,
                                         daemon: DaemonProcess) -> None:
    pusher = RandomPusher(client, seed=7)
    for _ in range(4):
        for _ in range(12):
            pusher.step()
        assert_index_matches(registry, daemon)
    status = json.loads(regidx("status", "--json", str(registry.config_path)).stdout)
    assert status["daemon"] and status["state"] == "trusted" and status["revisions"] > 10
    assert "RevisionLinked" in daemon.read_log() and "TagSet" in daemon.read_log()


def test_sweep_while_daemon_runs_then_restore_on_reuse(registry: RegistryServer, client: RegistryClient,
                                                       daemon: DaemonProcess) -> None:
    """Sweep with the daemon as the fence; then a new manifest re-uses a swept blob: it comes back."""
    old = push_image(client, "app", tag="v1", layers=[layer_bytes("old-layer")])
    client.delete_manifest("app", old.digest)
    daemon.fence()
    swept = json.loads(regidx("gc", "sweep", "--grace", "0", "--json", str(registry.config_path)).stdout)
    assert old.layer_digests[0] in {b["digest"] for b in swept["blobs"]}
    # The registry's cache still says the blob exists (the re-use race); a client pushes a manifest using it.
    manifest = old.manifest
    client.put_manifest("app", "again", manifest, old.media_type)
    daemon.fence()
    daemon.wait_for_log(f"restored {old.layer_digests[0]} from the trash")
    assert_index_matches(registry, daemon)
    registry.restart()
    pull_and_verify(client, "app", "again")


def test_kill_9_and_restart(registry: RegistryServer, client: RegistryClient, tmp_path: Path) -> None:
    pusher = RandomPusher(client, seed=11)
    d = DaemonProcess(registry.config_path, registry.root, tmp_path / "daemon.log")
    rng = random.Random(3)
    try:
        for _ in range(3):
            d.start()
            for _ in range(rng.randrange(3, 10)):
                pusher.step()
            d.kill()  # at a random point: possibly mid-batch
            for _ in range(3):
                pusher.step()  # changes while no daemon runs
            d.start()
            assert_index_matches(registry, d)
            d.stop()
    finally:
        d.close()


@contextmanager
def sysctl(name: str, value: int) -> Iterator[None]:
    path = Path("/proc/sys/fs/inotify") / name
    if os.geteuid() != 0 or not os.access(path, os.W_OK):
        pytest.skip(f"needs root to set fs.inotify.{name}")
    old = path.read_text()
    path.write_text(str(value))
    try:
        yield
    finally:
        path.write_text(old)


def test_queue_overflow_marks_untrusted_then_rescans(registry: RegistryServer, client: RegistryClient,
                                                    tmp_path: Path) -> None:
    push_image(client, "app", tag="v1", layers=[layer_bytes("x")])
    d = DaemonProcess(registry.config_path, registry.root, tmp_path / "daemon.log")
    try:
        with sysctl("max_queued_events", 16):
            d.start()  # its inotify instance keeps the tiny queue
        with d.proc_paused():
            for i in range(40):
                push_image(client, f"burst{i % 4}", tag=f"t{i}", layers=[layer_bytes(f"burst-{i}")])
        d.wait_for_log("queue overflow")
        d.wait_for_log("reconciling the index with the tree (queue overflow")
        assert_index_matches(registry, d)
    finally:
        d.close()


def test_too_few_watches_is_refused_at_startup(registry: RegistryServer, client: RegistryClient,
                                               tmp_path: Path) -> None:
    for i in range(3):
        push_image(client, f"repo{i}", tag="v1", layers=[layer_bytes(f"r{i}")])
    d = DaemonProcess(registry.config_path, registry.root, tmp_path / "daemon.log")
    try:
        with sysctl("max_user_watches", 20):
            d.start(wait=False)
            assert d.proc.wait(timeout=60) == 2
    finally:
        d.close()
    log = d.read_log()
    assert "fs.inotify.max_user_watches is 20" in log and "sysctl -w fs.inotify.max_user_watches=" in log


def test_a_watch_that_cannot_be_added_makes_the_index_untrusted(registry: RegistryServer, client: RegistryClient,
                                                               daemon: DaemonProcess) -> None:
    push_image(client, "app", tag="v1", layers=[layer_bytes("x")])
    daemon.fence()
    with sysctl("max_user_watches", 1):
        push_image(client, "newrepo", tag="v1", layers=[layer_bytes("y")])
        daemon.wait_for_log("index untrusted: watch failed")
        out = regidx("gc", "sweep", "--dry-run", "--grace", "0", str(registry.config_path), check=2)
        assert "not trusted" in out.stderr
    daemon.wait_for_log("reconciling the index with the tree (every directory is watched again)")
    assert_index_matches(registry, daemon)


def test_poll_mode_follows_pushes(registry: RegistryServer, client: RegistryClient, tmp_path: Path) -> None:
    """--poll (for NFS): no inotify; a fence waits for a poll that started after it."""
    with DaemonProcess(registry.config_path, registry.root, tmp_path / "daemon.log", "--poll", "0.2s") as d:
        pusher = RandomPusher(client, seed=3)
        for _ in range(10):
            pusher.step()
        assert_index_matches(registry, d)
        assert "inotify" not in d.read_log()


def test_scheduled_sweep_verify_and_purge(registry: RegistryServer, client: RegistryClient, tmp_path: Path) -> None:
    gone = push_image(client, "app", tag="v1", layers=[layer_bytes("scheduled-garbage")])
    push_image(client, "app", tag="v2", layers=[layer_bytes("kept")])
    client.delete_manifest("app", gone.digest)
    args = ("--sweep-every", "1s", "--grace", "0", "--verify-every", "1s", "--purge-trash-every", "1s",
            "--trash-retention", "0")
    with DaemonProcess(registry.config_path, registry.root, tmp_path / "daemon.log", *args) as d:
        d.wait_for_log("scheduled sweep: 3 blobs")
        d.wait_for_log("scheduled verify: the index agrees with the tree")
        d.wait_for_log("scheduled purge: 3 trash entries")
    assert not os.path.exists(f"{registry.root}/docker/registry/v2/blobs/sha256/{gone.layer_digests[0][7:9]}/"
                              f"{gone.layer_digests[0][7:]}")
    pull_and_verify(client, "app", "v2")
