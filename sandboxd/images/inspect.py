"""What containerd holds for each runtime: whether its image is present and unpacked, and its version."""

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, TypeVar

import attrs

from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient, Image, NotFoundError
from sandboxd.images.oci_image import HOST_PLATFORM, INDEX_TYPES, MANIFEST_TYPES, ImageConfig, Index, Manifest
from sandboxd.runtimes import Runtime
from sandboxd.validation import structure

BUILD_KEY_LABEL: Final = "sandboxd.io/build-key"
VERSION_LABEL: Final = "sandboxd.io/runtime-version"
RUNTIME_LABEL: Final = "sandboxd.io/runtime"
# On an image built on another's (ImageRecipe.extends): the chain ID of the layers it went on.
BUILT_ON_LABEL: Final = "sandboxd.io/built-on"

_Document = TypeVar("_Document", Index, Manifest, ImageConfig)


def image_build_dir(config: Config) -> Path:
    """Where image builds make their root filesystems and keep the shared base layer."""
    return config.paths.data / "build"


def builds_in_progress(data: Path) -> Path:
    """Where `sandboxd images build` marks each runtime it is building (under the data directory)."""
    return data / "build" / "building"


def build_status(directory: Path, runtime: str) -> str | None:
    """What a live `images build` is doing with ``runtime``'s image, as a reason; or None.

    A marker is the builder's pid, the time and "queued" or "building"; one whose process is
    gone (killed) is stale.
    """
    try:
        pid, started, *state = (directory / runtime).read_text().split()
        os.kill(int(pid), 0)
        since = time.strftime("%H:%M:%S", time.localtime(float(started)))
    except (OSError, ValueError):
        return None
    if state == ["queued"]:
        return f"image build queued (since {since})"
    return f"image building (since {since})"


def mark_building(directory: Path, runtime: str, *, queued: bool = False) -> Path:
    """Mark ``runtime``'s image as queued or being built by this process; return the marker."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / runtime
    marker.write_text(f"{os.getpid()} {time.time()} {'queued' if queued else 'building'}")
    return marker


def unmark_building(marker: Path) -> None:
    """Remove a marker ``mark_building`` made."""
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()


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
    built_on: str | None = None


def chain_id(diff_ids: Sequence[str]) -> str:
    """The snapshot name containerd gives an image's unpacked layers (OCI image spec ChainID)."""
    current = diff_ids[0]
    for diff_id in diff_ids[1:]:
        current = "sha256:" + hashlib.sha256(f"{current} {diff_id}".encode()).hexdigest()
    return current


class _UnusableImageError(Exception):
    """The image cannot serve as it is; the message says why."""


async def _read(client: ContainerdClient, what: str, digest: str, kind: type[_Document]) -> _Document:
    try:
        return structure(await client.content.read_json(digest), kind)
    except ValueError as error:  # not JSON, too large, or not the document it should be
        raise _UnusableImageError(f"has an invalid {what} ({digest}): {error}") from error


async def _manifest(client: ContainerdClient, image: Image) -> tuple[str, Manifest]:
    """The digest and content of the image's manifest for this host's platform (from its index, if any)."""
    target = image.target
    if target.media_type in INDEX_TYPES:
        manifest = (await _read(client, "index", target.digest, Index)).manifest_for(HOST_PLATFORM)
        if manifest is None:
            raise _UnusableImageError(f"has no {HOST_PLATFORM.os}/{HOST_PLATFORM.architecture} manifest")
        manifest_digest = manifest.digest
    elif target.media_type in MANIFEST_TYPES:
        manifest_digest = target.digest
    else:
        raise _UnusableImageError(f"has unsupported type {target.media_type}")
    return manifest_digest, await _read(client, "manifest", manifest_digest, Manifest)


@attrs.frozen
class ImageDocuments:
    """An image's manifest for this host (and its digest) and its configuration."""

    manifest_digest: str
    manifest: Manifest
    config: ImageConfig


async def read_image(client: ContainerdClient, reference: str) -> ImageDocuments:
    """An image's manifest and configuration for this host; ValueError for an unusable image."""
    try:
        digest, manifest = await _manifest(client, await client.images.get(reference))
        config = await _read(client, "config", manifest.config.digest, ImageConfig)
    except _UnusableImageError as error:
        raise ValueError(f"image {reference} {error}") from error
    return ImageDocuments(digest, manifest, config)


async def _layers(client: ContainerdClient, image: Image) -> tuple[str, ...]:
    """The image's layers for this host's platform, from its index (if any), manifest and config."""
    _, manifest = await _manifest(client, image)
    layers = (await _read(client, "config", manifest.config.digest, ImageConfig)).rootfs.diff_ids
    if not layers:
        raise _UnusableImageError("has no layers")
    return layers


async def inspect_image(client: ContainerdClient, runtime: Runtime) -> ImageState:
    """Look up a runtime's image in containerd and check that it is unpacked."""
    unavailable = ImageState(runtime=runtime.name, reference=runtime.image, available=False)
    hint = f"run: sandboxd images build {runtime.name}"
    try:
        image = await client.images.get(runtime.image)
    except NotFoundError:
        return attrs.evolve(unavailable, reason=f"image {runtime.image} is not in containerd; {hint}")
    try:
        layers = await _layers(client, image)
    except _UnusableImageError as error:
        return attrs.evolve(unavailable, reason=f"image {runtime.image} {error}")
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
        built_on=image.labels.get(BUILT_ON_LABEL),
    )


async def stale_images(client: ContainerdClient, runtimes: Iterable[Runtime]) -> list[Image]:
    """Images an `images build` made for a runtime that no runtime file names any more.

    Only images carrying the builder's runtime label count: an image pulled or tagged by
    hand is never one, nor is any image a runtime names.
    """
    wanted = {runtime.image for runtime in runtimes}
    built = await client.images.list([f'labels."{RUNTIME_LABEL}"'])
    return sorted((image for image in built if image.name not in wanted), key=lambda image: image.name)
