"""The registry's own config.yml, reduced to what regidx needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

DEFAULT_ROOT = "/var/lib/registry"
# Keys below `storage` that configure something other than the driver.
_STORAGE_NON_DRIVERS = {"delete", "cache", "maintenance", "redirect", "tag"}


@dataclass(frozen=True)
class Config:
    path: Path
    rootdirectory: Path
    delete_enabled: bool = False
    blobdescriptor: str | None = None
    redis: Mapping[str, Any] = field(default_factory=dict)


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read a registry config.yml, apply the registry's REGISTRY_* overrides, and validate it."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {_one_line(e)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    version = str(doc.get("version", ""))
    if version != "0.1":
        raise ConfigError(f"{path}: unsupported config version {version!r} (expected 0.1)")
    _apply_env_overrides(doc, environ)
    return _build(path, doc)


def _build(path: Path, doc: dict[str, Any]) -> Config:
    storage = doc.get("storage") or {}
    if not isinstance(storage, dict):
        raise ConfigError(f"{path}: 'storage' must be a mapping")
    drivers = [k for k in storage if k not in _STORAGE_NON_DRIVERS]
    if drivers != ["filesystem"]:
        if not drivers:
            raise ConfigError(f"{path}: no storage driver configured (regidx supports 'filesystem')")
        others = ", ".join(sorted(d for d in drivers if d != "filesystem"))
        raise ConfigError(f"{path}: storage driver {others} is not supported; regidx works on 'filesystem' storage only")
    fs = storage.get("filesystem") or {}
    if not isinstance(fs, dict):
        raise ConfigError(f"{path}: 'storage.filesystem' must be a mapping")
    root = fs.get("rootdirectory") or DEFAULT_ROOT
    delete = storage.get("delete") or {}
    cache = storage.get("cache") or {}
    redis = doc.get("redis") or {}
    if not all(isinstance(x, dict) for x in (delete, cache, redis)):
        raise ConfigError(f"{path}: 'storage.delete', 'storage.cache' and 'redis' must be mappings")
    return Config(
        path=path,
        rootdirectory=Path(str(root)),
        delete_enabled=_truthy(delete.get("enabled", False)),
        blobdescriptor=(str(cache["blobdescriptor"]) if cache.get("blobdescriptor") else None),
        redis=redis,
    )


def _apply_env_overrides(doc: dict[str, Any], environ: Mapping[str, str]) -> None:
    """REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/x sets storage.filesystem.rootdirectory, as the registry does.

    The registry matches each underscore-separated word against the (lower-cased) field names of
    its config struct; for the keys regidx reads, lower-casing the words gives the same path.
    """
    for name, value in sorted(environ.items()):
        if not name.startswith("REGISTRY_") or name == "REGISTRY_":
            continue
        keys = [k.lower() for k in name[len("REGISTRY_"):].split("_")]
        if len(keys) < 2 or keys[0] not in {"storage", "redis"}:
            continue
        node = doc
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = yaml.safe_load(value) if value else value
    # REGISTRY_STORAGE=s3 selects a driver by name, replacing the configured one.
    selected = environ.get("REGISTRY_STORAGE")
    if selected:
        storage = doc.get("storage") if isinstance(doc.get("storage"), dict) else {}
        doc["storage"] = {k: v for k, v in storage.items() if k in _STORAGE_NON_DRIVERS or k == selected}
        doc["storage"].setdefault(selected, {})


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1", "on"}
    return bool(value)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
