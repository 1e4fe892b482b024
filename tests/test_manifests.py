"""Reference extraction and classification for every manifest kind."""

import json

import pytest

from regidx.errors import ManifestError
from regidx.manifests import (DOCKER_LIST, DOCKER_V2, OCI_ARTIFACT, OCI_INDEX, OCI_MANIFEST, SCHEMA1,
                              SCHEMA1_SIGNED, parse_manifest)

A, B, C, S = ("sha256:" + ch * 64 for ch in "abcd")


def desc(d, **extra):
    return {"mediaType": "x", "digest": d, "size": 1, **extra}


def parse(doc):
    return parse_manifest(json.dumps(doc).encode(), "repo@digest")


def test_docker_v2():
    m = parse({"schemaVersion": 2, "mediaType": DOCKER_V2, "config": desc(A), "layers": [desc(B), desc(C, urls=["http://x"])]})
    assert m == (DOCKER_V2, (A, B, C), "")
    assert not m.is_index


def test_oci_manifest_with_subject():
    m = parse({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc(A), "layers": [desc(B)], "subject": desc(S)})
    assert m == (OCI_MANIFEST, (A, B), S)


@pytest.mark.parametrize("mt", [DOCKER_LIST, OCI_INDEX])
def test_indexes_reference_children_only(mt):
    m = parse({"schemaVersion": 2, "mediaType": mt, "manifests": [desc(A), desc(B)]})
    assert m.references == (A, B) and m.is_index


def test_no_media_type_is_classified_like_upstream():
    assert parse({"schemaVersion": 2, "manifests": [desc(A)]}).media_type == OCI_INDEX
    assert parse({"schemaVersion": 2, "config": desc(A), "layers": []}).media_type == OCI_MANIFEST


def test_schema1_signed_and_unsigned():
    doc = {"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": [{"blobSum": A}, {"blobSum": A}, {"blobSum": B}]}
    assert parse(doc) == (SCHEMA1, (A, A, B), "")
    doc["signatures"] = [{"header": {}, "signature": "s", "protected": "p"}]
    assert parse(doc).media_type == SCHEMA1_SIGNED


def test_artifact_manifest():
    m = parse({"mediaType": OCI_ARTIFACT, "artifactType": "x", "blobs": [desc(A)], "subject": desc(S)})
    assert m == (OCI_ARTIFACT, (A,), S)


@pytest.mark.parametrize("data,message", [
    (b"{not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown"}).encode(), "unrecognized manifest content type"),
    (json.dumps({"schemaVersion": 3}).encode(), "schema version"),
    (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2, "layers": []}).encode(), "no config"),
    (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2, "config": desc("sha256:zz")}).encode(), "config.digest"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc(A + "\n")]}).encode(), r"manifests\[0\]"),
    (json.dumps({"schemaVersion": 1, "fsLayers": [{}]}).encode(), "blobSum"),
])
def test_bad_manifests_name_where(data, message):
    with pytest.raises(ManifestError, match=message) as e:
        parse_manifest(data, "team/app@sha256:abc (/path/data)")
    assert "team/app@sha256:abc (/path/data)" in str(e.value)
