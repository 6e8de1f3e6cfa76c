"""OCI image JSON (index, manifest, config) as attrs models, read and written through the one converter.

Docker's manifest list and v2 manifest have the same shape as the OCI index and
manifest under other media types, so one model reads both. Only what sandboxd
reads or writes is modelled: keys these classes do not name are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

import attrs

from sandboxd.validation import external_document, json_key

INDEX_TYPE: Final = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE: Final = "application/vnd.oci.image.config.v1+json"
# Layers are stored zstd-compressed: a fifth of the tar's size, and containerd (1.5 and newer)
# unpacks them faster than gzip.
LAYER_TYPE: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
INDEX_TYPES: Final = frozenset({INDEX_TYPE, "application/vnd.docker.distribution.manifest.list.v2+json"})
MANIFEST_TYPES: Final = frozenset({MANIFEST_TYPE, "application/vnd.docker.distribution.manifest.v2+json"})
# The annotation naming the image an index entry is imported as (`ctr images import`).
IMAGE_NAME_ANNOTATION: Final = "io.containerd.image.name"


@external_document
@attrs.frozen
class Platform:
    """The operating system and CPU architecture an image runs on."""

    architecture: str
    os: str
    variant: str | None = None


_MACHINE = os.uname().machine
HOST_PLATFORM: Final = Platform(
    architecture={"x86_64": "amd64", "aarch64": "arm64"}.get(_MACHINE, _MACHINE), os="linux"
)


@external_document
@attrs.frozen
class Descriptor:
    """A reference to a blob: its media type, digest and size (and, in an index, its platform)."""

    media_type: str = attrs.field(metadata=json_key("mediaType"))
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = attrs.field(factory=dict)


@external_document
@attrs.frozen
class Index:
    """An image index (Docker: manifest list): one manifest per platform."""

    schema_version: int = attrs.field(metadata=json_key("schemaVersion"))
    manifests: tuple[Descriptor, ...]
    media_type: str | None = attrs.field(default=None, metadata=json_key("mediaType"))

    def manifest_for(self, platform: Platform) -> Descriptor | None:
        """The first manifest for ``platform``'s operating system and architecture, if any."""
        return next(
            (
                manifest
                for manifest in self.manifests
                if manifest.platform is not None
                and (manifest.platform.os, manifest.platform.architecture)
                == (platform.os, platform.architecture)
            ),
            None,
        )


@external_document
@attrs.frozen
class Manifest:
    """An image manifest: its config blob and its layers, bottom first."""

    schema_version: int = attrs.field(metadata=json_key("schemaVersion"))
    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str | None = attrs.field(default=None, metadata=json_key("mediaType"))


@external_document
@attrs.frozen
class RootFS:
    """The image's layers as their uncompressed digests (``diff_ids``), bottom first."""

    type: str
    diff_ids: tuple[str, ...]


@external_document
@attrs.frozen
class ContainerConfig:
    """The defaults for a container of the image; sandboxd sets only labels (Docker writes null for none)."""

    labels: Mapping[str, str] | None = attrs.field(default=None, metadata=json_key("Labels"))


@external_document
@attrs.frozen
class History:
    """How one layer was made."""

    created_by: str | None = None


@external_document
@attrs.frozen
class ImageConfig:
    """An image's configuration blob."""

    architecture: str
    os: str
    rootfs: RootFS
    config: ContainerConfig | None = None
    history: tuple[History, ...] = ()


@external_document
@attrs.frozen
class ImageLayout:
    """The ``oci-layout`` file of an image layout directory."""

    image_layout_version: str = attrs.field(metadata=json_key("imageLayoutVersion"))
