"""What containerd holds for each runtime: whether its image is present and unpacked, and its version."""

import hashlib
import os
from collections.abc import Sequence
from typing import Final

import attrs

from sandboxd.containerd import ContainerdClient, NotFoundError
from sandboxd.runtimes import Runtime

BUILD_KEY_LABEL: Final = "sandboxd.io/build-key"
VERSION_LABEL: Final = "sandboxd.io/runtime-version"
RUNTIME_LABEL: Final = "sandboxd.io/runtime"

_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


@attrs.frozen
class ImageState:
    """Whether a runtime's image can serve executions; ``reason`` says why not."""

    runtime: str
    reference: str
    available: bool
    version: str | None = None
    chain_id: str | None = None
    build_key: str | None = None
    reason: str | None = None
    # The image's layers (their uncompressed digests), bottom first.
    layers: tuple[str, ...] = ()


def chain_id(diff_ids: Sequence[str]) -> str:
    """The snapshot name containerd gives an image's unpacked layers (OCI image spec ChainID)."""
    current = diff_ids[0]
    for diff_id in diff_ids[1:]:
        current = "sha256:" + hashlib.sha256(f"{current} {diff_id}".encode()).hexdigest()
    return current


async def inspect_image(client: ContainerdClient, runtime: Runtime) -> ImageState:
    """Look up a runtime's image in containerd and check that it is unpacked."""
    unavailable = ImageState(runtime=runtime.name, reference=runtime.image, available=False)
    hint = f"run: sandboxd images build {runtime.name}"
    try:
        image = await client.images.get(runtime.image)
    except NotFoundError:
        return attrs.evolve(unavailable, reason=f"image {runtime.image} is not in containerd; {hint}")
    target = image.target
    if target.media_type in _INDEX_TYPES:
        index = await client.content.read_json(target.digest)
        matching = [
            m
            for m in index.get("manifests", [])
            if m.get("platform", {}).get("architecture") == ARCH
            and m.get("platform", {}).get("os") == "linux"
        ]
        if not matching:
            return attrs.evolve(unavailable, reason=f"image {runtime.image} has no linux/{ARCH} manifest")
        manifest_digest = matching[0]["digest"]
    elif target.media_type in _MANIFEST_TYPES:
        manifest_digest = target.digest
    else:
        return attrs.evolve(
            unavailable, reason=f"image {runtime.image} has unsupported type {target.media_type}"
        )
    manifest = await client.content.read_json(manifest_digest)
    config = await client.content.read_json(manifest["config"]["digest"])
    layers = tuple(config["rootfs"]["diff_ids"])
    chain = chain_id(layers)
    try:
        await client.snapshots.stat(chain)
    except NotFoundError:
        return attrs.evolve(
            unavailable, reason=f"image {runtime.image} is not unpacked for the snapshotter; {hint}"
        )
    return ImageState(
        runtime=runtime.name,
        reference=runtime.image,
        available=True,
        version=image.labels.get(VERSION_LABEL),
        chain_id=chain,
        build_key=image.labels.get(BUILD_KEY_LABEL),
        layers=layers,
    )
