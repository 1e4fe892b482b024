"""The registry's blob-descriptor cache: after a sweep it must forget what was deleted, or say so."""

from __future__ import annotations

import logging
import subprocess
from typing import Iterable

from .config import Config
from .errors import RegidxError

log = logging.getLogger("regidx.cache")

INMEMORY_WARNING = (
    "the registry's in-memory blob-descriptor cache keeps answering 200 for the deleted blobs until "
    "the registry restarts (clients then skip uploads and push broken images): restart it now, "
    "or give --after-sweep a restart command"
)


class CacheError(RegidxError):
    """The redis cache could not be reached or updated."""


def forget_deleted_blobs(config: Config, deleted: Iterable[tuple[str, list[str]]]) -> str | None:
    """Evict (digest, repositories) from the registry's redis cache; return a warning for the in-memory one.

    The registry (2.8 and v3) keeps `blobs::<digest>`, `repository::<name>::blobs::<digest>` and the
    set `repository::<name>::blobs`; with those gone, a HEAD for a deleted blob answers 404.
    """
    deleted = list(deleted)
    if not deleted or not config.blobdescriptor:
        return None
    if config.blobdescriptor != "redis":
        return INMEMORY_WARNING
    client = _client(config)
    try:
        with client.pipeline(transaction=False) as pipe:
            for digest, repos in deleted:
                pipe.delete(f"blobs::{digest}")
                for repo in repos:
                    pipe.delete(f"repository::{repo}::blobs::{digest}")
                    pipe.srem(f"repository::{repo}::blobs", digest)
            pipe.execute()
    except Exception as e:  # redis raises its own hierarchy; any failure is reported the same way
        raise CacheError(f"redis {config.redis.get('addr')}: cannot evict deleted blobs from the registry's "
                         f"cache ({e}); restart the registry so that it stops answering for them") from None
    log.info("evicted %d deleted blobs from the registry's redis cache", len(deleted))
    return None


def run_after_sweep(command: str) -> None:
    """--after-sweep: e.g. `systemctl restart docker-registry`, after a sweep that deleted something."""
    result = subprocess.run(command, shell=True)
    if result.returncode != 0:
        raise RegidxError(f"--after-sweep command exited {result.returncode}: {command}")


def _client(config: Config):  # type: ignore[no-untyped-def]
    import redis

    addr = str(config.redis.get("addr", "localhost:6379"))
    host, _, port = addr.rpartition(":")
    return redis.Redis(
        host=host or "localhost", port=int(port or 6379), db=int(config.redis.get("db", 0) or 0),
        password=config.redis.get("password") or None, username=config.redis.get("username") or None,
        socket_timeout=float(str(config.redis.get("readtimeout", "5s")).rstrip("s") or 5),
        socket_connect_timeout=float(str(config.redis.get("dialtimeout", "5s")).rstrip("s") or 5),
    )
