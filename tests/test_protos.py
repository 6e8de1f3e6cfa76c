"""The committed protobuf stubs match proto/, and protobuf stays inside sandboxd/containerd/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import generate_protos  # noqa: E402

from sandboxd.containerd import TaskStatus  # noqa: E402
from sandboxd.containerd._pb.containerd.services.images.v1 import images_pb2  # noqa: E402
from sandboxd.containerd._pb.containerd.services.tasks.v1 import tasks_pb2  # noqa: E402
from sandboxd.containerd._pb.containerd.types import descriptor_pb2  # noqa: E402
from sandboxd.containerd._pb.containerd.types.task import task_pb2  # noqa: E402
from sandboxd.containerd.client import Images, _process_info  # noqa: E402


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


class RecordingChannel:
    """Answers each RPC with a prepared response (or an empty one) and records the requests."""

    def __init__(self, responses: dict[str, Any]) -> None:
        self.responses = responses
        self.sent: list[tuple[str, Any]] = []

    async def unary(self, method: str, request: Any, response_type: Any) -> Any:
        """Record the call; answer it."""
        self.sent.append((method, request))
        return self.responses.get(method, response_type())


async def test_an_image_label_update_carries_the_images_target() -> None:
    """An image label update sends the image's own target: containerd 1.7 crashes on one without."""
    target = descriptor_pb2.Descriptor(
        media_type="application/vnd.oci.image.index.v1+json", digest="sha256:ab"
    )
    found = images_pb2.GetImageResponse(image=images_pb2.Image(name="i", target=target))
    channel = RecordingChannel({"/containerd.services.images.v1.Images/Get": found})
    await Images(channel).set_labels("i", {"sandboxd.io/version": "1"})  # type: ignore[arg-type]
    method, update = channel.sent[-1]
    assert method == "/containerd.services.images.v1.Images/Update"
    assert update.image.target == target
    assert list(update.update_mask.paths) == ["labels.sandboxd.io/version"]
    assert dict(update.image.labels) == {"sandboxd.io/version": "1"}
