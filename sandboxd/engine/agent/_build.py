"""Compiling the agent for this host: a static binary, rebuilt only when its source changes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Final

AGENT_NAME: Final = "sandboxd-agent"
_FLAGS: Final = ("-O2", "-static", "-Wall", "-Wextra", "-Werror")


class AgentBuildError(Exception):
    """The agent could not be compiled."""


def _agent_source() -> bytes:
    """The agent's C source, as shipped in the package."""
    return resources.files("sandboxd.engine.agent").joinpath("agent.c").read_bytes()


def build_agent(directory: Path, compiler: str = "cc") -> Path:
    """The directory holding the agent binary built from the current source, compiled if missing.

    Each source gets a directory of its own (named by its digest), so a daemon
    upgraded in place never mounts a binary that another version is writing.
    """
    source = _agent_source()
    digest = hashlib.sha256(source + " ".join(_FLAGS).encode()).hexdigest()[:16]
    target = directory / digest
    if (target / AGENT_NAME).is_file():
        return target
    found = shutil.which(compiler)
    if found is None:
        raise AgentBuildError(
            f"no C compiler ({compiler}) to build the sandbox agent: install gcc and libc6-dev"
        )
    partial = directory / f".{digest}.{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o755, parents=True)
    (partial / "agent.c").write_bytes(source)
    argv = [found, *_FLAGS, "-o", str(partial / AGENT_NAME), str(partial / "agent.c")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise AgentBuildError(f"compiling the sandbox agent failed:\n{done.stderr.strip()}")
    (partial / "agent.c").unlink()
    try:
        partial.replace(target)
    except OSError:
        # Another process won the race with the same source: use its binary.
        shutil.rmtree(partial, ignore_errors=True)
    return target
