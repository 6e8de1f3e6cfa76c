"""`sandboxd doctor`: checks of everything the daemon needs, one line each with a fix hint."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import attrs

from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient, ContainerdError
from sandboxd.engine.host import client_for
from sandboxd.images.inspect import ImageState, inspect_image
from sandboxd.images.usage import disk_usage, gib
from sandboxd.runtimes import RuntimeConfigError, load_runtimes
from sandboxd.service.store import StoreUnavailableError, open_store

_MIN_FREE_DATA: Final = 1 << 30
_MIN_FREE_STATE: Final = 256 << 20
# Older runsc answers coreutils' statx with EINVAL (`ls -l` fails) and lacks later security fixes.
MIN_RUNSC_RELEASE: Final = 20240729
_RUNSC_RELEASE = re.compile(r"(?:~|release-)(\d{8})\b")


def runsc_release(version_line: str) -> int | None:
    """The release date (YYYYMMDD) in runsc's version line, as Debian and gVisor spell it; None if absent."""
    found = _RUNSC_RELEASE.search(version_line)
    return int(found.group(1)) if found else None


@attrs.frozen
class Check:
    """One check's outcome; ``hint`` says how to fix a failure."""

    name: str
    ok: bool
    detail: str
    hint: str = ""

    def line(self) -> str:
        """The check as one line of output."""
        text = f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"
        return text if self.ok else f"{text}\n        fix: {self.hint}"


async def _runsc(binary: str) -> Check:
    if shutil.which(binary) is None:
        return Check("runsc", False, f"{binary} not found", "apt-get install runsc, or set [runsc] binary")
    process = await asyncio.create_subprocess_exec(
        binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    first = output.decode(errors="replace").splitlines()[:1]
    if process.returncode != 0 or not first:
        return Check("runsc", False, f"{binary} --version failed", "reinstall runsc")
    release = runsc_release(first[0])
    if release is not None and release < MIN_RUNSC_RELEASE:
        hint = (
            f"install runsc {MIN_RUNSC_RELEASE} or newer (Debian 12: bookworm-backports, as scripts/dev does)"
        )
        return Check("runsc", False, f"{first[0]}: older than {MIN_RUNSC_RELEASE}", hint)
    return Check("runsc", True, first[0])


def _cgroups(root: Path = Path("/sys/fs/cgroup")) -> Check:
    if (root / "cgroup.controllers").exists():
        controllers = set((root / "cgroup.controllers").read_text().split())
        missing = {"memory", "pids", "cpu"} - controllers
        version = "v2"
    else:
        missing = {name for name in ("memory", "pids", "cpu") if not (root / name).is_dir()}
        version = "v1"
    if missing:
        hint = "enable the missing controllers (kernel command line or systemd configuration)"
        return Check("cgroups", False, f"{version} without {', '.join(sorted(missing))}", hint)
    return Check("cgroups", True, f"{version} with memory, pids and cpu")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists (what a directory not made yet will be on)."""
    return next((p for p in (path, *path.parents) if p.exists()), Path("/"))


def _free_space(name: str, path: Path, minimum: int) -> Check:
    existing = _nearest_existing(path)
    free = shutil.disk_usage(existing).free
    detail = f"{free >> 20} MiB free at {existing}"
    if free < minimum:
        return Check(name, False, detail, f"free at least {minimum >> 20} MiB there")
    return Check(name, True, detail)


async def _image_disk(client: ContainerdClient, states: Sequence[ImageState], data: Path) -> Check:
    """What the images take, against the free space a rebuild of the largest one needs.

    A rebuild holds the image's root filesystem in the data directory while it packs and
    imports it, then its blobs and unpacked layers beside the old ones: about twice its size.
    """
    usage = await disk_usage(client, states)
    largest = max((image.stored + image.unpacked for image in usage.images), default=0)
    existing = _nearest_existing(data)
    free = (await asyncio.to_thread(shutil.disk_usage, existing)).free
    detail = (
        f"{len(usage.images)} take {gib(usage.total)} ({gib(usage.stored)} stored, "
        f"{gib(usage.unpacked)} unpacked); {gib(free)} free at {existing}"
    )
    needed = 2 * largest
    if free < needed:
        return Check(
            "image disk", False, detail, f"free {gib(needed - free)} more to rebuild the largest image"
        )
    return Check("image disk", True, detail)


async def _store(config: Config) -> Check:
    """The store answers, and its schema is the one this version migrates to."""
    kind = "PostgreSQL" if config.store.url.startswith("postgresql://") else "SQLite"
    hint = "start the database, or fix store.url (SANDBOXD_STORE_URL)"
    try:
        store = await open_store(config, "doctor", migrate=False)
    except StoreUnavailableError as error:
        return Check("store", False, f"{kind}: {error}", hint)
    try:
        version = await store.schema_version()
    except StoreUnavailableError as error:
        return Check("store", False, f"{kind}: {error}", hint)
    finally:
        await store.close()
    latest = store.latest_version
    if version > latest:
        detail = f"{kind}: schema version {version} is newer than this sandboxd's ({latest})"
        return Check("store", False, detail, "upgrade sandboxd to the version the other hosts run")
    if version < latest and store.shared:
        detail = f"{kind}: schema version {version}, this sandboxd needs {latest}"
        return Check("store", False, detail, "start `sandboxd serve` once: it migrates at start-up")
    if version < latest:  # an embedded database is brought up to date when the daemon starts
        return Check("store", True, f"{kind}, schema version {version}, migrated to {latest} at start-up")
    return Check("store", True, f"{kind}, schema version {version}")


async def checks(config: Config) -> AsyncIterator[Check]:
    """Every check, in the order an operator would fix them."""
    keys = len(config.api_keys) + len(config.dev_keys)
    yield (
        Check("api keys", True, f"{keys} configured")
        if keys
        else Check("api keys", False, "none configured", "sandboxd --config FILE keys add NAME")
    )
    yield await _runsc(config.runsc.binary)
    yield await asyncio.to_thread(_cgroups)
    yield await asyncio.to_thread(_free_space, "disk (data)", config.paths.data, _MIN_FREE_DATA)
    yield await asyncio.to_thread(_free_space, "disk (state)", config.paths.state, _MIN_FREE_STATE)
    try:
        runtimes = await asyncio.to_thread(load_runtimes, config.paths.runtimes)
    except RuntimeConfigError as error:
        yield Check("runtimes", False, "; ".join(error.problems), "fix the runtime files")
        return
    yield Check("runtimes", True, f"{len(runtimes)} in {config.paths.runtimes}")
    yield await _store(config)
    client = client_for(config)
    try:
        try:
            version = await client.version(timeout=3)
        except ContainerdError as error:
            hint = "start containerd (systemctl start containerd) or set [containerd] address"
            yield Check("containerd", False, f"{config.containerd.address}: {error.detail}", hint)
            return
        yield Check("containerd", True, f"{version.version} at {config.containerd.address}")
        states = []
        for runtime in runtimes:
            state = await inspect_image(client, runtime)
            states.append(state)
            name = f"image {runtime.name}"
            if state.available:
                yield Check(name, True, f"{runtime.image} ({state.version})")
            else:
                yield Check(
                    name, False, state.reason or "unavailable", f"sandboxd images build {runtime.name}"
                )
        yield await _image_disk(client, states, config.paths.data)
    finally:
        await client.close()
