"""The OCI spec sandboxes run under."""

from __future__ import annotations

from pathlib import Path

from sandboxd.engine.oci import AGENT_DIR, SandboxLimits, sandbox_spec
from sandboxd.images.inspect import chain_id

LIMITS = SandboxLimits(
    memory_bytes=128 << 20, pids=64, cpus=0.5, tmp_bytes=1 << 20, file_size_bytes=2 << 20, open_files=256
)


def test_init_is_the_agent_with_four_capabilities() -> None:
    """The init process is the agent: root in the sandbox, only the capabilities to drop to nobody."""
    spec = sandbox_spec(
        hostname="sandbox", workspace=Path("/run/ws/1"), agent_dir=Path("/run/agent/abc"),
        agent_name="sandboxd-agent", limits=LIMITS, cgroups_path="/sandboxd/1", root=Path("/run/roots/x"),
    )  # fmt: skip
    process = spec["process"]
    assert process["args"] == [f"{AGENT_DIR}/sandboxd-agent"]
    assert process["user"] == {"uid": 0, "gid": 0}
    wanted = ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL"]
    capabilities = process["capabilities"]
    assert capabilities["bounding"] == capabilities["effective"] == capabilities["permitted"] == wanted
    assert capabilities["inheritable"] == capabilities["ambient"] == []
    assert process["noNewPrivileges"] is True
    assert process["env"] == []
    rlimits = {r["type"]: r["hard"] for r in process["rlimits"]}
    assert rlimits["RLIMIT_NOFILE"] == 256
    assert rlimits["RLIMIT_FSIZE"] == 2 << 20
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts[AGENT_DIR]["source"] == "/run/agent/abc"
    assert "ro" in mounts[AGENT_DIR]["options"]


def test_sandbox_is_confined() -> None:
    """Read-only root, writable /workspace and /tmp only, own network namespace, cgroup limits."""
    spec = sandbox_spec(
        hostname="sandbox",
        workspace=Path("/run/ws/1"),
        agent_dir=Path("/run/agent/abc"),
        agent_name="sandboxd-agent",
        limits=LIMITS,
        cgroups_path="/sandboxd/1",
        root=Path("/run/roots/python"),
    )
    assert spec["root"] == {"path": "/run/roots/python", "readonly": True}
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/workspace"]["source"] == "/run/ws/1"
    assert "rw" in mounts["/workspace"]["options"]
    assert "size=1048576" in mounts["/tmp"]["options"]
    assert {"type": "network"} in spec["linux"]["namespaces"]
    resources = spec["linux"]["resources"]
    assert resources["memory"]["limit"] == 128 << 20
    assert resources["pids"]["limit"] == 64 * 16 + 256
    rlimits = {r["type"]: r["hard"] for r in spec["process"]["rlimits"]}
    assert rlimits["RLIMIT_NPROC"] == 62
    assert resources["cpu"] == {"quota": 50_000, "period": 100_000}


def test_chain_id() -> None:
    """One layer's chain ID is its diff ID; more layers chain by the OCI rule."""
    assert chain_id(["sha256:a"]) == "sha256:a"
    expected = "sha256:" + __import__("hashlib").sha256(b"sha256:a sha256:b").hexdigest()
    assert chain_id(["sha256:a", "sha256:b"]) == expected
