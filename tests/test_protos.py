"""The committed protobuf stubs match proto/."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import generate_protos  # noqa: E402

from sandboxd.containerd._pb.containerd.services.tasks.v1 import tasks_pb2  # noqa: E402


def test_stubs_are_current(tmp_path: Path) -> None:
    """Regenerating the stubs from proto/ gives exactly the committed files."""
    fresh = tmp_path / "_pb"
    generate_protos.generate(fresh)
    assert generate_protos.differences(fresh, generate_protos.OUT_DIR) == []


def test_service_paths_are_containerds() -> None:
    """The generated descriptors carry containerd's own package names (the wire contract)."""
    service = tasks_pb2.DESCRIPTOR.services_by_name["Tasks"]
    assert service.full_name == "containerd.services.tasks.v1.Tasks"
    # containerd's field numbers, even where a field sandboxd never sends (exec_id = 2) was left out.
    assert tasks_pb2.KillRequest.DESCRIPTOR.fields_by_name["signal"].number == 3
