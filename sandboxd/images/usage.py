"""How much disk the runtime images take: their blobs in containerd's content store and their unpacked layers.

Layers two images share (the Debian base) count once. The unpacked size is measured, not
estimated: a short-lived read-only view of each image names the directories its layers
were unpacked into (overlayfs ``lowerdir``), and their files' blocks are added up.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from sandboxd.containerd import ContainerdClient, Mount
from sandboxd.images.inspect import ImageState, read_image
from sandboxd.images.views import image_view


@attrs.frozen
class ImageUsage:
    """One image's share of the disk: its blobs (compressed) and its unpacked layers, in bytes."""

    runtime: str
    # digest: size, for the manifest, the config and every layer blob.
    blobs: Mapping[str, int]
    # unpacked layer directory: bytes it takes.
    layers: Mapping[str, int]

    @property
    def stored(self) -> int:
        """Bytes of its blobs in the content store."""
        return sum(self.blobs.values())

    @property
    def unpacked(self) -> int:
        """Bytes of its unpacked layers."""
        return sum(self.layers.values())


@attrs.frozen
class DiskUsage:
    """The disk every image takes together, each shared blob and layer counted once."""

    images: tuple[ImageUsage, ...]

    @property
    def stored(self) -> int:
        """Bytes of all images' blobs in the content store."""
        return sum(_union(image.blobs for image in self.images).values())

    @property
    def unpacked(self) -> int:
        """Bytes of all images' unpacked layers."""
        return sum(_union(image.layers for image in self.images).values())

    @property
    def total(self) -> int:
        """Everything the images take."""
        return self.stored + self.unpacked


def _union(mappings: Iterable[Mapping[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for mapping in mappings:
        merged.update(mapping)
    return merged


def tree_bytes(root: Path) -> int:
    """The bytes the files under ``root`` take on disk (allocated blocks; hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _subdirectories, files in os.walk(root):
        total += os.lstat(directory).st_blocks * 512
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
    return total


def layer_directories(mount: Mount) -> tuple[str, ...]:
    """The directories a read-only view's mount is made of: overlayfs lower dirs, or a bind's source."""
    if mount.type == "overlay":
        for option in mount.options:
            if option.startswith("lowerdir="):
                return tuple(option.removeprefix("lowerdir=").split(":"))
        return ()
    return (mount.source,)


async def _blobs(client: ContainerdClient, state: ImageState) -> dict[str, int]:
    image = await client.images.get(state.reference)
    documents = await read_image(client, state.reference)
    blobs = {image.target.digest: image.target.size}
    blobs[documents.manifest_digest] = await client.content.size(documents.manifest_digest)
    for descriptor in (documents.manifest.config, *documents.manifest.layers):
        blobs[descriptor.digest] = descriptor.size
    return blobs


async def _layers(client: ContainerdClient, state: ImageState) -> dict[str, int]:
    if state.chain_id is None:
        return {}
    async with image_view(client, state.chain_id, "usage") as mounts:
        directories = [d for mount in mounts for d in layer_directories(mount)]
        sizes = await asyncio.gather(*(asyncio.to_thread(tree_bytes, Path(d)) for d in directories))
    return dict(zip(directories, sizes, strict=True))


async def image_usage(client: ContainerdClient, state: ImageState) -> ImageUsage:
    """What one available image takes."""
    return ImageUsage(state.runtime, await _blobs(client, state), await _layers(client, state))


async def disk_usage(client: ContainerdClient, states: Iterable[ImageState]) -> DiskUsage:
    """What the available images among ``states`` take, together."""
    usages = [await image_usage(client, state) for state in states if state.available]
    return DiskUsage(tuple(usages))


def gib(size: int) -> str:
    """``size`` bytes as GiB with two decimals."""
    return f"{size / (1 << 30):.2f} GiB"
