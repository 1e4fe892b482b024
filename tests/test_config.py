"""Reading the registry's config.yml."""

import pytest

from regidx.config import DEFAULT_ROOT, load_config
from regidx.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "config.yml"
    p.write_text(text)
    return p


def test_reads_what_we_need(tmp_path):
    p = write(tmp_path, """
version: 0.1
storage:
  cache: {blobdescriptor: redis}
  filesystem: {rootdirectory: /srv/reg}
  delete: {enabled: true}
redis: {addr: "127.0.0.1:6379", db: 2}
""")
    c = load_config(p, environ={})
    assert str(c.rootdirectory) == "/srv/reg"
    assert c.delete_enabled and c.blobdescriptor == "redis"
    assert c.redis == {"addr": "127.0.0.1:6379", "db": 2}


def test_defaults(tmp_path):
    c = load_config(write(tmp_path, "version: 0.1\nstorage:\n  filesystem: {}\n"), environ={})
    assert str(c.rootdirectory) == DEFAULT_ROOT and not c.delete_enabled and c.blobdescriptor is None


def test_environment_overrides(tmp_path):
    p = write(tmp_path, "version: 0.1\nstorage:\n  filesystem: {rootdirectory: /a}\n")
    c = load_config(p, environ={
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/b",
        "REGISTRY_STORAGE_DELETE_ENABLED": "true",
        "REGISTRY_REDIS_ADDR": "localhost:1",
    })
    assert str(c.rootdirectory) == "/b" and c.delete_enabled and c.redis["addr"] == "localhost:1"


def test_environment_selects_other_driver(tmp_path):
    p = write(tmp_path, "version: 0.1\nstorage:\n  filesystem: {rootdirectory: /a}\n")
    with pytest.raises(ConfigError, match="s3"):
        load_config(p, environ={"REGISTRY_STORAGE": "s3"})


@pytest.mark.parametrize("text,message", [
    ("version: 0.1\nstorage:\n  s3: {bucket: x}\n", "storage driver s3 is not supported"),
    ("version: 0.1\nstorage:\n  gcs: {}\n  delete: {enabled: true}\n", "gcs"),
    ("version: 0.1\nstorage: {}\n", "no storage driver"),
    ("version: 0.1\nstorage: [\n", "malformed YAML"),
    ("- a\n- b\n", "mapping"),
    ("version: 0.2\nstorage:\n  filesystem: {}\n", "version"),
])
def test_errors_name_the_file(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(p, environ={})
    assert str(p) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yml", environ={})
