"""The committed protobuf stubs match proto/, and protobuf stays inside sandboxd/containerd/."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import generate_protos  # noqa: E402

from sandboxd.containerd import TaskStatus  # noqa: E402
from sandboxd.containerd._pb.containerd.services.tasks.v1 import tasks_pb2  # noqa: E402
from sandboxd.containerd._pb.containerd.types.task import task_pb2  # noqa: E402
from sandboxd.containerd.client import _process_info  # noqa: E402

# Modules of these names are protobuf; only the containerd client may import them.
_PROTOBUF = ("sandboxd.containerd._pb", "google.protobuf")


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


def test_task_states_become_the_clients_enum() -> None:
    """Every state of containerd's enum has its TaskStatus; a state it adds later reads as UNKNOWN."""
    assert {status.name for status in TaskStatus} == set(task_pb2.Status.keys())
    for status in TaskStatus:
        assert _process_info(task_pb2.Process(id="c", status=status.name)).status is status
    later = task_pb2.Process(container_id="c", status=99)  # type: ignore[arg-type]
    assert _process_info(later).status is TaskStatus.UNKNOWN


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, and for ``from X import Y`` also ``X.Y`` (Y may be a module)."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def test_protobuf_does_not_leave_the_containerd_package() -> None:
    """Outside sandboxd/containerd/ nothing imports the stubs or protobuf: callers get attrs values."""
    inside = ROOT / "sandboxd" / "containerd"
    this_file = Path(__file__).resolve()  # checks the stubs themselves
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for folder in ("sandboxd", "tests", "bench", "tools")
        for path in (ROOT / folder).rglob("*.py")
        if not path.is_relative_to(inside) and path != this_file
        for module in set(_imports(path))
        if any(module == name or module.startswith(f"{name}.") for name in _PROTOBUF)
    )
    assert offenders == []
