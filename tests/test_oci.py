"""The OCI spec sandboxes run under."""

from __future__ import annotations

from pathlib import Path

from sandboxd.images import chain_id
from sandboxd.oci import NOBODY, SandboxLimits, process_spec, sandbox_spec

LIMITS = SandboxLimits(memory_bytes=128 << 20, pids=64, cpus=0.5, tmp_bytes=1 << 20, file_size_bytes=2 << 20)


def test_process_is_unprivileged() -> None:
    """Processes run as nobody, with no capabilities, no privilege gain, and bounded files."""
    process = process_spec(["python3", "main.py"], {"A": "1"}, LIMITS)
    assert process["user"]["uid"] == NOBODY
    assert process["user"]["gid"] == NOBODY
    assert all(caps == [] for caps in process["capabilities"].values())
    assert process["noNewPrivileges"] is True
    assert process["env"] == ["A=1"]
    assert process["cwd"] == "/workspace"
    rlimits = {r["type"]: r["hard"] for r in process["rlimits"]}
    assert rlimits["RLIMIT_NOFILE"] == 256
    assert rlimits["RLIMIT_FSIZE"] == 2 << 20


def test_sandbox_is_confined() -> None:
    """Read-only root, writable /workspace and /tmp only, own network namespace, cgroup limits."""
    spec = sandbox_spec(
        hostname="sandbox",
        workspace=Path("/run/ws/1"),
        limits=LIMITS,
        environment={},
        cgroups_path="/sandboxd/1",
    )
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/workspace"]["source"] == "/run/ws/1"
    assert "rw" in mounts["/workspace"]["options"]
    assert "size=1048576" in mounts["/tmp"]["options"]
    assert {"type": "network"} in spec["linux"]["namespaces"]
    resources = spec["linux"]["resources"]
    assert resources["memory"]["limit"] == 128 << 20
    assert resources["pids"]["limit"] == 64 * 16 + 256
    rlimits = {r["type"]: r["hard"] for r in spec["process"]["rlimits"]}
    assert rlimits["RLIMIT_NPROC"] == 64
    assert resources["cpu"] == {"quota": 50_000, "period": 100_000}
    assert spec["process"]["args"] == ["/bin/sleep", "infinity"]


def test_chain_id() -> None:
    """One layer's chain ID is its diff ID; more layers chain by the OCI rule."""
    assert chain_id(["sha256:a"]) == "sha256:a"
    expected = "sha256:" + __import__("hashlib").sha256(b"sha256:a sha256:b").hexdigest()
    assert chain_id(["sha256:a", "sha256:b"]) == expected
