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
