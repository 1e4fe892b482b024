"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.client import RegistryClient
from support.registry import REGISTRY_BIN, RegistryServer

# --- real docker-registry over HTTP (tests/support) ----------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A running `docker-registry serve`; storage in tmp_path/root, config and log in tmp_path."""
    if not Path(REGISTRY_BIN).exists():
        message = f"{REGISTRY_BIN} not installed (Debian: apt-get install docker-registry)"
        if os.environ.get("CI"):  # in CI a missing registry is a broken image, not a skip
            pytest.fail(message)
        pytest.skip(message)
    with RegistryServer(tmp_path / "root", workdir=tmp_path) as server:
        yield server


@pytest.fixture
def client(registry: RegistryServer) -> Iterator[RegistryClient]:
    with RegistryClient(registry.url) as c:
        yield c


# --- end real docker-registry --------------------------------------------------------------


# --- a real redis-server, for the registry's blob-descriptor cache ---------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """`redis-server` on a free loopback port, no persistence; yields its address host:port."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server not installed (Debian: apt-get install redis-server)")
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
