"""Preparing this host for sandboxes: state directories, the runsc wrapper and the sandbox agent."""

from __future__ import annotations

import datetime as dt
import os
import shlex
from collections.abc import Callable
from pathlib import Path

from sandboxd.agent import AGENT_NAME, build_agent
from sandboxd.config import Config
from sandboxd.containerd import ContainerdClient
from sandboxd.sandbox import SandboxHost

# A lease outlives any execution (the longest timeout is minutes); it only
# matters when the daemon died and left the execution's resources behind.
LEASE_TTL = dt.timedelta(hours=1)


def runsc_wrapper_script(config: Config) -> str:
    """The executable the runc shim runs instead of runc: runsc without network, on the set platform."""
    argv = [config.runsc.binary, "--network=none", f"--platform={config.runsc.platform}"]
    return (
        "#!/bin/sh\n# Written by sandboxd at start-up.\nexec " + " ".join(map(shlex.quote, argv)) + ' "$@"\n'
    )


def prepare_host(config: Config, client: ContainerdClient) -> SandboxHost:
    """Create the state directories, the runsc wrapper and the agent; return where sandboxes are made."""
    state = config.paths.state
    for directory in (state, state / "workspaces", state / "fifos", state / "runsc", state / "agent"):
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
        lease_ttl=LEASE_TTL,
    )


def client_for(config: Config, on_error: Callable[[str], None] | None = None) -> ContainerdClient:
    """A containerd client for the configured socket, namespace and snapshotter."""
    return ContainerdClient(
        config.containerd.address,
        config.containerd.namespace,
        snapshotter=config.containerd.snapshotter,
        on_error=on_error,
    )


def engine_work_dir(config: Config) -> Path:
    """Where image builds unpack their root filesystems."""
    return config.paths.data / "build"
