"""OCI and Docker image JSON structured through the one converter, and images whose JSON is incomplete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from sandboxd.containerd import ContainerdClient, Descriptor, Image, NotFoundError, Snapshot
from sandboxd.images.inspect import chain_id, inspect_image
from sandboxd.images.oci_image import (
    HOST_PLATFORM,
    INDEX_TYPES,
    MANIFEST_TYPE,
    MANIFEST_TYPES,
    ImageConfig,
    Index,
    Manifest,
    Platform,
)
from sandboxd.runtimes import Runtime, load_runtimes
from sandboxd.validation import ValidationError, converter, structure

DOCKER_MANIFEST_LIST: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [
        {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": "sha256:" + "a" * 64,
            "size": 529,
            "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
        },
        {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": "sha256:" + "b" * 64,
            "size": 529,
            "platform": {"architecture": "amd64", "os": "linux", "features": ["sse4"]},
        },
    ],
}
OCI_INDEX: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {
            "mediaType": MANIFEST_TYPE,
            "digest": "sha256:" + "c" * 64,
            "size": 745,
            "platform": {"architecture": "arm64", "os": "linux"},
            "annotations": {"io.containerd.image.name": "sandboxd.local/runtimes/python:bookworm"},
        }
    ],
    "annotations": {"org.opencontainers.image.created": "2026-12-01T00:00:00Z"},
}
DOCKER_MANIFEST: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "digest": "sha256:" + "d" * 64,
        "size": 1470,
    },
    "layers": [
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": "sha256:" + "e" * 64,
            "size": 3370706,
        }
    ],
}
DOCKER_CONFIG: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "created": "2026-11-30T00:00:00Z",
    "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"], "Labels": None},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "f" * 64, "sha256:" + "0" * 64]},
    "history": [{"created": "2026-11-30T00:00:00Z", "created_by": "ADD rootfs.tar /"}, {"empty_layer": True}],
}


def test_docker_manifest_list_gives_the_platforms_manifest() -> None:
    """A Docker manifest list reads as an index; keys not modelled (``features``) are ignored."""
    index = structure(DOCKER_MANIFEST_LIST, Index)
    assert index.media_type in INDEX_TYPES
    chosen = index.manifest_for(Platform(architecture="amd64", os="linux"))
    assert chosen is not None
    assert (chosen.media_type in MANIFEST_TYPES, chosen.digest) == (True, "sha256:" + "b" * 64)
    assert index.manifests[0].platform == Platform(architecture="arm", os="linux", variant="v7")
    assert index.manifest_for(Platform(architecture="s390x", os="linux")) is None


def test_oci_index_round_trips_with_its_own_key_spelling() -> None:
    """An OCI index reads with its annotations and writes back in camelCase, without the keys not modelled."""
    index = structure(OCI_INDEX, Index)
    (manifest,) = index.manifests
    assert manifest.annotations == {"io.containerd.image.name": "sandboxd.local/runtimes/python:bookworm"}
    assert manifest.platform == Platform(architecture="arm64", os="linux")
    written = converter.unstructure(index)
    assert written == {key: value for key, value in OCI_INDEX.items() if key != "annotations"}
    assert structure(json.loads(json.dumps(written)), Index) == index


def test_docker_manifest_and_config_give_the_layers() -> None:
    """A Docker v2 manifest and its config read as OCI's; null labels and extra history keys are fine."""
    manifest = structure(DOCKER_MANIFEST, Manifest)
    assert manifest.config.digest == "sha256:" + "d" * 64
    assert [layer.size for layer in manifest.layers] == [3370706]
    config = structure(DOCKER_CONFIG, ImageConfig)
    assert config.rootfs.diff_ids == ("sha256:" + "f" * 64, "sha256:" + "0" * 64)
    assert config.config is not None
    assert config.config.labels is None
    assert [entry.created_by for entry in config.history] == ["ADD rootfs.tar /", None]


@pytest.mark.parametrize(
    ("document", "kind", "problem"),
    [
        ({"schemaVersion": 2, "layers": []}, Manifest, "config: required field missing"),
        (
            {**DOCKER_CONFIG, "rootfs": {"type": "layers"}},
            ImageConfig,
            "rootfs.diff_ids: required field missing",
        ),
        ({"schemaVersion": 2, "manifests": [{"digest": "x", "size": 1}]}, Index, "manifests[0].media_type"),
        ({**DOCKER_MANIFEST, "layers": {}}, Manifest, "layers: expected a list"),
    ],
)
def test_a_missing_or_mistyped_field_is_named(
    document: dict[str, Any], kind: type[Any], problem: str
) -> None:
    """JSON lacking a field the format requires does not structure; the problem names the field."""
    with pytest.raises(ValidationError) as caught:
        structure(document, kind)
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems


class _Images:
    def __init__(self, image: Image) -> None:
        self.image = image

    async def get(self, name: str) -> Image:
        return self.image


class _Content:
    def __init__(self, blobs: dict[str, Any]) -> None:
        self.blobs = blobs

    async def read_json(self, digest: str) -> Any:
        return self.blobs[digest]


class _Snapshots:
    def __init__(self, unpacked: set[str]) -> None:
        self.unpacked = unpacked

    async def stat(self, key: str) -> Snapshot:
        if key not in self.unpacked:
            raise NotFoundError("Stat", f"snapshot {key} does not exist")
        return Snapshot(name=key, labels={})


class _Containerd:
    """Holds one image, its blobs and the snapshots unpacked from it."""

    def __init__(self, target: Descriptor, blobs: dict[str, Any], unpacked: set[str]) -> None:
        self.images = _Images(Image(name="example", labels={}, target=target))
        self.content = _Content(blobs)
        self.snapshots = _Snapshots(unpacked)


def _python() -> Runtime:
    runtime = load_runtimes(Path(__file__).resolve().parent.parent / "runtimes").get("python")
    assert runtime is not None
    return runtime


def _index_for_host() -> dict[str, Any]:
    platform = {"architecture": HOST_PLATFORM.architecture, "os": HOST_PLATFORM.os}
    return {**OCI_INDEX, "manifests": [{**OCI_INDEX["manifests"][0], "platform": platform}]}


async def test_image_with_complete_json_is_available() -> None:
    """Index, manifest and config lead to the layers, whose chain ID names the unpacked snapshot."""
    index = Descriptor(media_type=OCI_INDEX["mediaType"], digest="sha256:index", size=1)
    blobs = {
        "sha256:index": _index_for_host(),
        "sha256:" + "c" * 64: DOCKER_MANIFEST,
        "sha256:" + "d" * 64: DOCKER_CONFIG,
    }
    layers = tuple(DOCKER_CONFIG["rootfs"]["diff_ids"])
    client = _Containerd(index, blobs, {chain_id(layers)})
    state = await inspect_image(cast(ContainerdClient, client), _python())
    assert (state.available, state.layers, state.reason) == (True, layers, None)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (
            {key: value for key, value in DOCKER_CONFIG.items() if key != "rootfs"},
            "rootfs: required field missing",
        ),
        ({**DOCKER_CONFIG, "rootfs": {"type": "layers", "diff_ids": []}}, "has no layers"),
    ],
)
async def test_image_with_incomplete_json_is_unavailable_with_a_reason(
    config: dict[str, Any], reason: str
) -> None:
    """An image whose config lacks a field (or any layer) is unavailable; the reason says what is wrong."""
    manifest = Descriptor(media_type=MANIFEST_TYPE, digest="sha256:manifest", size=1)
    client = _Containerd(manifest, {"sha256:manifest": DOCKER_MANIFEST, "sha256:" + "d" * 64: config}, set())
    state = await inspect_image(cast(ContainerdClient, client), _python())
    assert not state.available
    assert state.reason is not None
    assert reason in state.reason, state.reason


async def test_index_without_the_hosts_platform_is_unavailable() -> None:
    """An index with no manifest for this host's OS and architecture is unavailable, saying so."""
    other = "s390x" if HOST_PLATFORM.architecture != "s390x" else "amd64"
    index = {
        **OCI_INDEX,
        "manifests": [
            {**DOCKER_MANIFEST_LIST["manifests"][0], "platform": {"architecture": other, "os": "linux"}}
        ],
    }
    target = Descriptor(media_type=OCI_INDEX["mediaType"], digest="sha256:index", size=1)
    state = await inspect_image(
        cast(ContainerdClient, _Containerd(target, {"sha256:index": index}, set())), _python()
    )
    assert state.reason is not None
    assert f"has no linux/{HOST_PLATFORM.architecture} manifest" in state.reason
