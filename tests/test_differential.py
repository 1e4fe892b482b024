"""regidx garbage-collect against the real registry: same tree, same answers (and the documented differences)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from support.client import (Image, RegistryClient, RegistryError, layer_bytes, pull_and_verify, sha256_digest, push_image,
                            push_index, push_referrer)
from support.registry import RegistryServer, parse_gc_output, run_upstream_gc
from regidx.layout import Layout
from support.tree import blobs_on_disk

pytestmark = pytest.mark.registry


@dataclass
class Scenario:
    """What was pushed, and what must survive each kind of collection."""

    tagged: list[tuple[str, str]] = field(default_factory=list)  # (repo, tag) alive in every mode
    untagged: list[Image] = field(default_factory=list)  # revisions no tag points at, kept by plain mode
    # Untagged manifests that upstream 2.8.2 -m deletes and regidx -m keeps on purpose.
    kept_by_us: list[Image] = field(default_factory=list)
    deleted: list[Image] = field(default_factory=list)  # deleted through the API
    orphans: set[str] = field(default_factory=set)  # blobs that no manifest ever referenced


def push_scenario(c: RegistryClient) -> Scenario:
    s = Scenario()
    base = layer_bytes("base")
    # Docker and OCI images sharing a base layer, a referrer of one, and a retag.
    a1 = push_image(c, "library/alpine", tag="3.18", layers=[base, layer_bytes("a1")])
    push_image(c, "library/alpine", tag="oci", layers=[base, layer_bytes("a2")], oci=True)
    edge_old = push_image(c, "library/alpine", tag="edge", layers=[base, layer_bytes("edge-old")])
    push_image(c, "library/alpine", tag="edge", layers=[base, layer_bytes("edge-new")])
    sbom = push_referrer(c, "library/alpine", a1)
    s.tagged += [("library/alpine", t) for t in ("3.18", "oci", "edge")]
    s.untagged.append(edge_old)
    s.kept_by_us.append(sbom)
    # Nested repositories, a parent that is itself a repository, and a cross-repo mount.
    push_image(c, "team/app", tag="v1", layers=[layer_bytes("team-base"), layer_bytes("t1")])
    assert c.mount_blob("team/app/web", sha256_digest(layer_bytes("team-base")), "team/app")
    push_image(c, "team/app/web", tag="latest", layers=[layer_bytes("team-base"), layer_bytes("w1")])
    assert c.mount_blob("mounted", sha256_digest(base), "library/alpine")
    push_image(c, "mounted", tag="m", layers=[base, layer_bytes("m1")])
    s.tagged += [("team/app", "v1"), ("team/app/web", "latest"), ("mounted", "m")]
    # A tagged manifest list and a tagged OCI index, children pushed by digest; a referrer of the list.
    kids = [push_image(c, "multi", layers=[base, layer_bytes(f"multi-{a}")]) for a in ("amd64", "arm64")]
    lst = push_index(c, "multi", tag="latest", children=kids)
    sig = push_referrer(c, "multi", lst, artifact_type="application/vnd.example.signature.v1")
    oci_kids = [push_image(c, "ocimulti", layers=[layer_bytes(f"oci-{a}")], oci=True) for a in ("amd64", "s390x")]
    push_index(c, "ocimulti", tag="v1", children=oci_kids, oci=True)
    s.tagged += [("multi", "latest"), ("ocimulti", "v1")]
    s.kept_by_us += [*kids, sig, *oci_kids]
    # An untagged list with untagged children: every mode of -m deletes all three.
    stale_kids = [push_image(c, "multi", layers=[layer_bytes(f"stale-{a}")]) for a in ("amd64", "arm64")]
    s.untagged += [push_index(c, "multi", children=stale_kids), *stale_kids]
    # A foreign layer (never uploaded).
    push_image(c, "foreign", tag="win", layers=[layer_bytes("f1")], foreign_layer=True)
    s.tagged.append(("foreign", "win"))
    # Deleted by digest through the API (its tag goes with it).
    gone = push_image(c, "delete/me", tag="old", layers=[layer_bytes("gone")])
    c.delete_manifest("delete/me", gone.digest)
    s.deleted.append(gone)
    # A blob uploaded then deleted through the API, one uploaded and never used, an unfinished upload.
    x = c.push_blob("library/alpine", layer_bytes("deleted-blob"))
    c.delete_blob("library/alpine", x)
    s.orphans |= {x, c.push_blob("orphan", layer_bytes("never-used"))}
    c.start_upload("library/alpine")
    return s


def regidx_gc(config, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "regidx.cli", "garbage-collect", *args, str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def blob_set(images: list[Image]) -> set[str]:
    return {d for img in images for d in (img.digest, *img.blobs)}


def normalised(stdout: str) -> list[str]:
    """Upstream prints the eligible blobs in Go map order; compare them as a sorted block."""
    lines = stdout.splitlines()
    eligible = sorted(line for line in lines if line.startswith("blob eligible for deletion: "))
    return [line for line in lines if not line.startswith("blob eligible for deletion: ")] + eligible


@pytest.fixture
def scenario(client: RegistryClient) -> Scenario:
    return push_scenario(client)


def test_plain_mode_output_is_identical_to_upstream(registry: RegistryServer, scenario: Scenario) -> None:
    upstream = run_upstream_gc(registry.config_path)
    ours = regidx_gc(registry.config_path, "--dry-run")
    assert normalised(ours.stdout) == normalised(upstream.stdout)
    # And the content is what the scenario says, not just equal to upstream.
    expected = blob_set(scenario.deleted) | scenario.orphans
    assert parse_gc_output(ours.stdout).eligible_blobs == expected == upstream.eligible_blobs


def test_delete_untagged_differs_only_where_upstream_breaks_images(
        registry: RegistryServer, client: RegistryClient, scenario: Scenario) -> None:
    upstream = run_upstream_gc(registry.config_path, delete_untagged=True)
    ours = parse_gc_output(regidx_gc(registry.config_path, "--dry-run", "-m").stdout)
    kept = {img.digest for img in scenario.kept_by_us}
    # Upstream 2.8.2 deletes index children and referrers (issues 3178, 3004); we keep them,
    # and the blobs that only they use. Nothing else differs.
    assert upstream.eligible_manifests - ours.eligible_manifests == kept
    assert ours.eligible_manifests == {img.digest for img in scenario.untagged}
    assert upstream.eligible_blobs - ours.eligible_blobs == blob_set(scenario.kept_by_us) - upstream.marked
    assert ours.eligible_blobs <= upstream.eligible_blobs
    alive = {d for repo, tag in scenario.tagged for d in pull_and_verify(client, repo, tag)}
    alive |= {d for img in scenario.kept_by_us for d in pull_and_verify(client, img.repo, img.digest)}
    garbage = blob_set(scenario.untagged + scenario.deleted) | scenario.orphans
    assert ours.eligible_blobs == garbage - alive


@pytest.mark.parametrize("mode", [(), ("-m",)], ids=["plain", "delete-untagged"])
def test_real_run_then_every_survivor_pulls(registry: RegistryServer, client: RegistryClient,
                                            scenario: Scenario, mode: tuple[str, ...]) -> None:
    layout = Layout(registry.root)
    before = blobs_on_disk(layout)
    planned = parse_gc_output(regidx_gc(registry.config_path, "--dry-run", *mode).stdout)
    registry.stop()
    regidx_gc(registry.config_path, *mode)
    assert blobs_on_disk(layout) == before - planned.eligible_blobs
    registry.start()
    for repo, tag in scenario.tagged:
        pull_and_verify(client, repo, tag)
    survivors = scenario.kept_by_us + ([] if mode else scenario.untagged)
    for img in survivors:
        pull_and_verify(client, img.repo, img.digest)
    for img in scenario.deleted + (scenario.untagged if mode else []):
        with pytest.raises(RegistryError):
            client.get_manifest(img.repo, img.digest)
    # Afterwards the reference finds nothing left to collect in plain mode.
    assert run_upstream_gc(registry.config_path).eligible_blobs == set()


@pytest.mark.parametrize("mode", [(), ("-m",)], ids=["plain", "delete-untagged"])
def test_index_sweep_agrees_and_every_survivor_pulls(registry: RegistryServer, client: RegistryClient,
                                                     scenario: Scenario, mode: tuple[str, ...]) -> None:
    """Push, delete, rebuild the index, sweep from it, then pull every image that must survive."""
    config = str(registry.config_path)
    registry.stop()
    expected = parse_gc_output(regidx_gc(config, "--dry-run", *mode).stdout)
    run = subprocess.run([sys.executable, "-m", "regidx.cli", "index", "rebuild", config], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "regidx.cli", "gc", "sweep", "--grace", "0", "--json", *mode, config],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    swept = json.loads(run.stdout)
    assert {b["digest"] for b in swept["blobs"]} == expected.eligible_blobs
    assert {m["digest"] for m in swept["manifests"]} == expected.eligible_manifests
    registry.start()
    for repo, tag in scenario.tagged:
        pull_and_verify(client, repo, tag)
    for img in scenario.kept_by_us + ([] if mode else scenario.untagged):
        pull_and_verify(client, img.repo, img.digest)
    run = subprocess.run([sys.executable, "-m", "regidx.cli", "index", "verify", config], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_repository_never_tagged(registry: RegistryServer, client: RegistryClient) -> None:
    """2.8.2 -m aborts on a repository that has manifests but no tags directory; we treat them as untagged."""
    push_image(client, "tagged", tag="v1", layers=[layer_bytes("t")])
    lonely = push_image(client, "bydigest", layers=[layer_bytes("only-by-digest")])
    upstream = run_upstream_gc(registry.config_path, delete_untagged=True, check=False)
    assert upstream.returncode != 0 and "unknown repository" in upstream.stdout + upstream.stderr
    ours = parse_gc_output(regidx_gc(registry.config_path, "--dry-run", "-m").stdout)
    assert ours.eligible_manifests == {lonely.digest}
    assert ours.eligible_blobs == {lonely.digest, *lonely.blobs}


def test_empty_registry(registry: RegistryServer) -> None:
    """2.8.2 aborts when repositories/ does not exist yet; an empty registry has nothing to collect."""
    (registry.root / "docker/registry/v2/blobs").mkdir(parents=True, exist_ok=True)
    upstream = run_upstream_gc(registry.config_path, check=False)
    assert upstream.returncode != 0 and "Path not found" in upstream.stdout + upstream.stderr
    ours = regidx_gc(registry.config_path, "--dry-run")
    assert ours.stdout.splitlines()[-1] == "0 blobs marked, 0 blobs and 0 manifests eligible for deletion"
