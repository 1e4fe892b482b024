"""The registry's blob-descriptor cache after a sweep: redis entries evicted, the in-memory one warned about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.client import RegistryClient, layer_bytes, push_image
from support.registry import RegistryServer

pytestmark = pytest.mark.registry


def regidx(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "regidx.cli", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def push_and_delete(client: RegistryClient) -> str:
    """An image whose unique layer becomes garbage, after the registry has cached its descriptor."""
    push_image(client, "app", tag="keep", layers=[layer_bytes("kept")])
    gone = push_image(client, "app", tag="gone", layers=[layer_bytes("garbage-layer")])
    layer = gone.layer_digests[0]
    assert client.head_blob("app", layer) == 200  # cached now
    client.delete_manifest("app", gone.digest)
    return layer


def test_redis_cache_is_evicted(tmp_path: Path, redis_server: str) -> None:
    with RegistryServer(tmp_path / "root", workdir=tmp_path, cache="redis", redis_addr=redis_server) as registry, \
            RegistryClient(registry.url) as client:
        layer = push_and_delete(client)
        regidx("index", "rebuild", str(registry.config_path))
        out = regidx("gc", "sweep", "--grace", "0", str(registry.config_path))
        assert layer in out.stdout and "warning" not in out.stderr
        assert client.head_blob("app", layer) == 404  # without restarting the registry


def test_inmemory_cache_is_warned_about_and_after_sweep_runs(tmp_path: Path, registry: RegistryServer,
                                                             client: RegistryClient) -> None:
    layer = push_and_delete(client)
    regidx("index", "rebuild", str(registry.config_path))
    marker = tmp_path / "after-sweep-ran"
    out = regidx("gc", "sweep", "--grace", "0", str(registry.config_path))
    assert "in-memory blob-descriptor cache keeps answering 200" in out.stderr
    assert client.head_blob("app", layer) == 200  # the hazard itself, as upstream 2.8.2 shows it
    push_image(client, "app", tag="more", layers=[layer_bytes("more-garbage")])
    client.delete_manifest("app", client.get_manifest("app", "more")[2])
    regidx("index", "rebuild", str(registry.config_path))
    out = regidx("gc", "sweep", "--grace", "0", "--after-sweep", f"touch {marker}", str(registry.config_path))
    assert marker.exists() and "warning" not in out.stderr
    registry.restart()
    assert client.head_blob("app", layer) == 404
