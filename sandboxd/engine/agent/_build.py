"""Compiling the agent for this host: a static binary, rebuilt only when its source changes.

Beside it go the runtimes' syntax checks (``checks/``), files a runtime's run command
loads from the agent's directory, which every sandbox mounts read-only: they reach the
sandboxes with the agent, not baked into each runtime's image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Final

AGENT_NAME: Final = "sandboxd-agent"
CHECKS_DIR: Final = "checks"
_FLAGS: Final = ("-O2", "-static", "-Wall", "-Wextra", "-Werror")


class AgentBuildError(Exception):
    """The agent could not be compiled."""


def _agent_source() -> bytes:
    """The agent's C source, as shipped in the package."""
    return resources.files("sandboxd.engine.agent").joinpath("agent.c").read_bytes()


def shipped_checks() -> dict[str, bytes]:
    """The syntax checks shipped in the package, by file name."""
    directory = resources.files("sandboxd.engine.agent").joinpath(CHECKS_DIR)
    return {
        entry.name: entry.read_bytes()
        for entry in directory.iterdir()
        if entry.is_file() and not entry.name.startswith((".", "__"))
    }


def _digest(source: bytes, checks: dict[str, bytes]) -> str:
    digest = hashlib.sha256(source + " ".join(_FLAGS).encode())
    for name, content in sorted(checks.items()):
        digest.update(b"\0%s\0%d\0" % (name.encode(), len(content)) + content)
    return digest.hexdigest()[:16]


def build_agent(directory: Path, compiler: str = "cc") -> Path:
    """The directory holding the agent binary and the checks of the current source, built if missing.

    Each source gets a directory of its own (named by its digest, the checks included), so
    a daemon upgraded in place never mounts files that another version is writing.
    """
    source = _agent_source()
    checks = shipped_checks()
    digest = _digest(source, checks)
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
    _write_checks(partial / CHECKS_DIR, checks)
    partial.chmod(0o755)
    try:
        partial.replace(target)
    except OSError:
        # Another process won the race with the same source: use its binary.
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _write_checks(directory: Path, checks: dict[str, bytes]) -> None:
    # Modes set explicitly: the program (uid 65534) reads them, whatever the daemon's umask.
    directory.mkdir()
    directory.chmod(0o755)
    for name, content in checks.items():
        path = directory / name
        path.write_bytes(content)
        path.chmod(0o644)
