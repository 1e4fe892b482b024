"""Online GC attacked on purpose: sweeps while a real registry takes pushes, the re-use race, crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from regidx.layout import Layout
from regidx.trash import Trash, default_trash_dir
from support.client import (Image, RegistryClient, RegistryError, layer_bytes, pull_and_verify, push_image,
                            push_index, push_referrer)
from support.daemon import DaemonProcess
from support.registry import RegistryServer

pytestmark = pytest.mark.registry
REGIDX = [sys.executable, "-m", "regidx.cli"]


def regidx(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*REGIDX, *args], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    return result


@pytest.fixture
def daemon(registry: RegistryServer, tmp_path: Path):
    with DaemonProcess(registry.config_path, registry.root, tmp_path / "daemon.log") as d:
        yield d


def test_reuse_race_is_repaired_and_timed(registry: RegistryServer, client: RegistryClient,
                                          daemon: DaemonProcess) -> None:
    """HEAD an old unreferenced blob (200), sweep it away, then PUT a manifest that references it."""
    old = push_image(client, "app", tag="old", layers=[layer_bytes("reused-layer")])
    client.delete_manifest("app", old.digest)
    layer = old.layer_digests[0]
    daemon.fence()
    assert client.head_blob("app", layer) == 200  # the client decides not to upload it
    swept = json.loads(regidx("gc", "sweep", "--grace", "0", "--json", str(registry.config_path)).stdout)
    assert layer in {b["digest"] for b in swept["blobs"]}
    data = Path(Layout(registry.root).blob_data(layer))
    assert not data.exists()
    client.put_manifest("app", "new", old.manifest, old.media_type)  # the registry's cache vouches for it
    put_done = time.monotonic()
    while not data.exists():
        assert time.monotonic() - put_done < 10, "the daemon never restored the blob"
        time.sleep(0.001)
    window = time.monotonic() - put_done
    print(f"\nre-use race: blob missing for {window * 1000:.1f} ms after the manifest PUT returned")
    daemon.wait_for_log(f"restored {layer} from the trash")
    registry.restart()
    pull_and_verify(client, "app", "new")


def test_kill_9_during_sweeps(registry: RegistryServer, client: RegistryClient, daemon: DaemonProcess) -> None:
    """A sweep killed at random points: nothing referenced is lost, the trash stays consistent, the
    index agrees with the tree, and the next sweep completes."""
    rng = random.Random(5)
    kept = [push_image(client, "keep", tag=f"t{i}", layers=[layer_bytes("shared"), layer_bytes(f"keep-{i}")])
            for i in range(5)]
    config = str(registry.config_path)
    layout = Layout(registry.root)
    for round_ in range(8):
        for i in range(25):  # fresh garbage every round
            c = push_image(client, "junk", tag="x", layers=[layer_bytes(f"junk-{round_}-{i}")])
            client.delete_manifest("junk", c.digest)
        daemon.fence()
        proc = subprocess.Popen([*REGIDX, "gc", "sweep", "--grace", "0", config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.25, 0.9))  # python start-up is ~0.3 s: kill before, during or after
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for img in kept:
            for d in (img.digest, *img.blobs):
                assert os.path.exists(layout.blob_data(d)), f"round {round_}: live blob {d} lost"
        trash = Trash(default_trash_dir(registry.root))
        for entry in trash.entries():
            assert not (entry.has_data and os.path.exists(layout.blob_data(entry.digest))), entry
        daemon.fence()
        regidx("index", "verify", config)
        regidx("gc", "sweep", "--grace", "0", config)
        regidx("index", "verify", config)
    for i, img in enumerate(kept):
        pull_and_verify(client, "keep", f"t{i}")


class Pusher(threading.Thread):
    """Pushes images (Docker, OCI, indexes, referrers) whose layers overlap older, deleted ones; deletes
    and retags some. Remembers what must exist at the end. A push the registry refuses (a blob a
    sweep took between upload and manifest) is retried from the start, as a client would."""

    def __init__(self, url: str, n: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url, self.n, self.deadline = url, n, deadline
        self.rng = random.Random(n)
        self.expected: dict[tuple[str, str], Image] = {}
        self.pushes = self.failed_pushes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with RegistryClient(self.url) as c:
                i = 0
                while time.monotonic() < self.deadline and i < 60:
                    i += 1
                    self.one(c, i)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def one(self, c: RegistryClient, i: int) -> None:
        rng, repo = self.rng, f"team{self.n}/app{self.rng.randrange(2)}"
        layers = [layer_bytes(f"pool-{rng.randrange(8)}"), layer_bytes(f"p{self.n}-{i}")]
        for _attempt in range(5):
            try:
                kind = rng.random()
                if kind < 0.6:
                    img = push_image(c, repo, tag=f"t{i % 4}", layers=layers, oci=rng.random() < 0.4)
                elif kind < 0.8:
                    kids = [push_image(c, repo, layers=[layers[0], layer_bytes(f"p{self.n}-{i}-{k}")]) for k in range(2)]
                    img = push_index(c, repo, tag=f"t{i % 4}", children=kids, oci=rng.random() < 0.5)
                else:
                    base = push_image(c, repo, tag=f"t{i % 4}", layers=layers)
                    push_referrer(c, repo, base)
                    img = base
                self.pushes += 1
                break
            except RegistryError:
                self.failed_pushes += 1
        else:
            return
        self.expected[(repo, f"t{i % 4}")] = img
        if rng.random() < 0.2:  # delete an older one
            old_key = rng.choice(list(self.expected))
            old = self.expected.pop(old_key)
            try:
                c.delete_manifest(old.repo, old.digest)
            except RegistryError:
                pass
            self.expected = {k: v for k, v in self.expected.items() if v.digest != old.digest or v.repo != old.repo}


def test_stress_sweeps_during_pushes(registry: RegistryServer, client: RegistryClient,
                                     daemon: DaemonProcess) -> None:
    config = str(registry.config_path)
    # Older images, deleted: their layers are in the pushers' pool, so sweeps meet re-used blobs.
    for k in range(8):
        old = push_image(client, "old/images", tag=f"o{k}", layers=[layer_bytes(f"pool-{k}")])
        client.delete_manifest("old/images", old.digest)
    deadline = time.monotonic() + 20
    pushers = [Pusher(registry.url, n, deadline) for n in range(3)]
    for p in pushers:
        p.start()
    sweeps = deleted = 0
    while any(p.is_alive() for p in pushers):
        out = regidx("gc", "sweep", "--grace", "2s", "-m", "--json", config)
        deleted += len(json.loads(out.stdout)["blobs"])
        out = regidx("gc", "sweep", "--grace", "0", "--json", config)
        deleted += len(json.loads(out.stdout)["blobs"])
        sweeps += 2
    for p in pushers:
        p.join()
        assert p.error is None, p.error
    daemon.fence()
    regidx("index", "verify", config)
    registry.restart()  # the in-memory blob-descriptor cache forgets the deleted blobs
    broken = []
    checked = 0
    for p in pushers:
        for repo, tag in p.expected:
            try:
                pull_and_verify(client, repo, tag)
                checked += 1
            except AssertionError as e:
                broken.append(str(e))
    pushes = sum(p.pushes for p in pushers)
    refused = sum(p.failed_pushes for p in pushers)
    restores = daemon.read_log().count("from the trash")
    print(f"\nstress: {pushes} pushes ({refused} refused and retried), {sweeps} sweeps, {deleted} blobs deleted, "
          f"{restores} auto-restores, {checked} images pulled and hashed, {len(broken)} broken")
    assert broken == []
    assert pushes > 20 and sweeps >= 4
