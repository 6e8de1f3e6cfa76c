"""Preparing this host for sandboxes: state directories, the runsc wrapper and the sandbox agent."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
from collections.abc import Callable

from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient, ContainerdError
from sandboxd.engine.agent import AGENT_NAME, build_agent
from sandboxd.engine.sandbox import SandboxHost

log = logging.getLogger(__name__)


def runsc_wrapper_script(config: Config) -> str:
    """The executable the runc shim runs instead of runc: runsc without network, on the set platform."""
    argv = [config.runsc.binary, "--network=none", f"--platform={config.runsc.platform}"]
    return (
        "#!/bin/sh\n# Written by sandboxd at start-up.\nexec " + " ".join(map(shlex.quote, argv)) + ' "$@"\n'
    )


def prepare_host(config: Config, client: ContainerdClient) -> SandboxHost:
    """Create the state directories, the runsc wrapper and the agent; return where sandboxes are made."""
    state = config.paths.state
    for directory in (state, *(state / name for name in ("workspaces", "fifos", "runsc", "agent", "roots"))):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    wrapper = state / "runsc-sandboxd"
    partial = wrapper.with_suffix(".partial")
    partial.write_text(runsc_wrapper_script(config))
    partial.chmod(0o755)
    partial.replace(wrapper)
    return SandboxHost(
        client=client,
        runsc_wrapper=wrapper,
        runsc_root=state / "runsc",
        runsc_binary=config.runsc.binary,
        agent_dir=build_agent(state / "agent"),
        agent_name=AGENT_NAME,
        workspaces=state / "workspaces",
        fifos=state / "fifos",
        roots=state / "roots",
    )


def client_for(config: Config, on_error: Callable[[str], None] | None = None) -> ContainerdClient:
    """A containerd client for the configured socket, namespace and snapshotter."""
    return ContainerdClient(
        config.containerd.address,
        config.containerd.namespace,
        snapshotter=config.containerd.snapshotter,
        on_error=on_error,
    )


_CONNECT_ATTEMPTS = 20
_CONNECT_INTERVAL = 0.5


class StartupError(Exception):
    """The daemon cannot start; the message says what to do."""


async def connect(client: ContainerdClient) -> None:
    """Wait until containerd answers, for a few seconds at most."""
    for attempt in range(_CONNECT_ATTEMPTS):
        try:
            version = await client.version(timeout=2)
        except ContainerdError as error:
            if attempt == _CONNECT_ATTEMPTS - 1:
                raise StartupError(
                    f"containerd at {client.address} does not answer: {error.detail}"
                ) from error
            await asyncio.sleep(_CONNECT_INTERVAL)
        else:
            log.info("containerd %s at %s, namespace %s", version.version, client.address, client.namespace)
            return
