"""An asyncio client for the parts of containerd's gRPC API that sandboxd uses.

Each containerd service is a small wrapper class over one shared channel. Every
call carries the namespace header; calls made on behalf of an execution also
carry its lease, so that containerd's garbage collector can reclaim whatever a
crashed daemon left behind once the lease expires.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs
import grpc
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2, message

from sandboxd.containerd._pb.containerd.runc.v1 import options_pb2
from sandboxd.containerd._pb.containerd.services.containers.v1 import containers_pb2
from sandboxd.containerd._pb.containerd.services.content.v1 import content_pb2
from sandboxd.containerd._pb.containerd.services.images.v1 import images_pb2
from sandboxd.containerd._pb.containerd.services.leases.v1 import leases_pb2
from sandboxd.containerd._pb.containerd.services.snapshots.v1 import snapshots_pb2
from sandboxd.containerd._pb.containerd.services.tasks.v1 import tasks_pb2
from sandboxd.containerd._pb.containerd.services.version.v1 import version_pb2
from sandboxd.containerd._pb.containerd.types import mount_pb2
from sandboxd.containerd._pb.containerd.types.task import task_pb2
from sandboxd.containerd.errors import ContainerdError, translate

_SPEC_TYPE_URL: Final = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
_RUNC_OPTIONS_TYPE_URL: Final = "containerd.runc.v1.Options"
_GC_EXPIRE_LABEL: Final = "containerd.io/gc.expire"

_Response = TypeVar("_Response", bound=message.Message)

# Calls that only touch metadata answer in milliseconds; a longer wait means
# containerd is wedged, and the execution should fail rather than hang.
DEFAULT_RPC_TIMEOUT: Final = 30.0


@attrs.frozen
class Mount:
    """A mount as containerd describes a snapshot's filesystem."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


def _mount_to_pb(mount: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=mount.type, source=mount.source, target=mount.target, options=mount.options)


def _mount_from_pb(mount: mount_pb2.Mount) -> Mount:
    return Mount(type=mount.type, source=mount.source, target=mount.target, options=tuple(mount.options))


@attrs.frozen
class RuncOptions:
    """Options of containerd's runc shim: the OCI runtime binary it drives, and that runtime's state root."""

    binary_name: str
    root: str


@attrs.frozen
class Descriptor:
    """Content as containerd points at it: media type, digest and size of a blob."""

    media_type: str
    digest: str
    size: int


@attrs.frozen
class Image:
    """An image record: a name and labels pointing at its root blob (a manifest or an index)."""

    name: str
    labels: Mapping[str, str]
    target: Descriptor


@attrs.frozen
class Snapshot:
    """A snapshot as its snapshotter lists it."""

    name: str
    labels: Mapping[str, str]


@attrs.frozen
class Container:
    """A container record as containerd lists it."""

    id: str
    labels: Mapping[str, str]


@attrs.frozen
class Lease:
    """A lease as containerd lists it."""

    id: str
    labels: Mapping[str, str]


@attrs.frozen
class ExitStatus:
    """How a process ended: its status as containerd reports it (128+N for signal N)."""

    code: int


class TaskStatus(enum.Enum):
    """The state of a task's init process."""

    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"


_TASK_STATUS: Final = {
    task_pb2.UNKNOWN: TaskStatus.UNKNOWN,
    task_pb2.CREATED: TaskStatus.CREATED,
    task_pb2.RUNNING: TaskStatus.RUNNING,
    task_pb2.STOPPED: TaskStatus.STOPPED,
    task_pb2.PAUSED: TaskStatus.PAUSED,
    task_pb2.PAUSING: TaskStatus.PAUSING,
}


@attrs.frozen
class ProcessInfo:
    """A task's init process as containerd lists it."""

    container_id: str
    status: TaskStatus


def _serialize(request: message.Message) -> bytes:
    return request.SerializeToString()


class _Channel:
    """One gRPC channel to containerd plus the metadata every call needs."""

    def __init__(self, address: str, namespace: str, on_error: Callable[[str], None] | None) -> None:
        self.namespace = namespace
        self.on_error = on_error
        self.channel = grpc.aio.insecure_channel(
            f"unix://{address}",
            options=[("grpc.default_authority", "localhost"), ("grpc.max_receive_message_length", 16 << 20)],
        )

    def metadata(self, lease: str | None) -> tuple[tuple[str, str], ...]:
        if lease is None:
            return (("containerd-namespace", self.namespace),)
        return (("containerd-namespace", self.namespace), ("containerd-lease", lease))

    async def unary(
        self,
        method: str,
        request: message.Message,
        response_type: type[_Response],
        *,
        lease: str | None = None,
        timeout: float | None = DEFAULT_RPC_TIMEOUT,
    ) -> _Response:
        """Call one unary RPC; gRPC failures come out as typed ``ContainerdError`` subclasses."""
        call = self.channel.unary_unary(
            method,
            request_serializer=_serialize,
            response_deserializer=response_type.FromString,
        )
        try:
            response: _Response = await call(request, metadata=self.metadata(lease), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            if self.on_error is not None:
                self.on_error(method)
            raise translate(method, error) from error
        return response

    async def stream(
        self, method: str, request: message.Message, response_type: type[_Response]
    ) -> AsyncIterator[_Response]:
        """Call one server-streaming RPC and yield its messages."""
        call = self.channel.unary_stream(
            method,
            request_serializer=_serialize,
            response_deserializer=response_type.FromString,
        )
        try:
            async for item in call(request, metadata=self.metadata(None), timeout=DEFAULT_RPC_TIMEOUT):
                yield item
        except grpc.aio.AioRpcError as error:
            if self.on_error is not None:
                self.on_error(method)
            raise translate(method, error) from error


class _Service:
    """Base of the per-service wrappers: holds the channel and the RPC path prefix."""

    PREFIX: str = ""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def _method(self, name: str) -> str:
        return f"/{self.PREFIX}/{name}"


def _image(image: images_pb2.Image) -> Image:
    target = image.target
    return Image(
        name=image.name,
        labels=dict(image.labels),
        target=Descriptor(media_type=target.media_type, digest=target.digest, size=target.size),
    )


class Images(_Service):
    """containerd's image metadata store: names pointing at content descriptors."""

    PREFIX = "containerd.services.images.v1.Images"

    async def get(self, name: str) -> Image:
        """Return the image record called ``name``."""
        request = images_pb2.GetImageRequest(name=name)
        response = await self._channel.unary(self._method("Get"), request, images_pb2.GetImageResponse)
        return _image(response.image)

    async def list(self, filters: Sequence[str] = ()) -> list[Image]:
        """Return every image record matching the filters (containerd's filter syntax)."""
        request = images_pb2.ListImagesRequest(filters=filters)
        response = await self._channel.unary(self._method("List"), request, images_pb2.ListImagesResponse)
        return [_image(image) for image in response.images]

    async def delete(self, name: str) -> None:
        """Delete an image record; with it go the blobs and snapshots nothing else references."""
        # sync: containerd collects what only this image held before it answers.
        request = images_pb2.DeleteImageRequest(name=name, sync=True)
        await self._channel.unary(self._method("Delete"), request, empty_pb2.Empty)

    async def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        """Set the given labels on an image, leaving its other labels as they are."""
        # containerd 1.7 converts an update's whole image, labels-only ones too, and a missing
        # target crashes the daemon (a nil dereference): the image goes with its own target.
        current = await self._channel.unary(
            self._method("Get"), images_pb2.GetImageRequest(name=name), images_pb2.GetImageResponse
        )
        image = images_pb2.Image(name=name, labels=labels, target=current.image.target)
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
        request = images_pb2.UpdateImageRequest(image=image, update_mask=mask)
        await self._channel.unary(self._method("Update"), request, images_pb2.UpdateImageResponse)


class Content(_Service):
    """containerd's content-addressed blob store."""

    PREFIX = "containerd.services.content.v1.Content"

    async def size(self, digest: str) -> int:
        """The size of a blob in the store, in bytes."""
        info = await self._channel.unary(
            self._method("Info"), content_pb2.InfoRequest(digest=digest), content_pb2.InfoResponse
        )
        return int(info.info.size)

    async def read(self, digest: str, *, limit: int = 4 << 20) -> bytes:
        """Return a whole blob; blobs larger than ``limit`` are refused (sandboxd reads only JSON)."""
        size = await self.size(digest)
        if size > limit:
            raise ValueError(f"blob {digest} is {size} bytes, more than the {limit} expected")
        chunks = [
            chunk.data
            async for chunk in self._channel.stream(
                self._method("Read"),
                content_pb2.ReadContentRequest(digest=digest),
                content_pb2.ReadContentResponse,
            )
        ]
        return b"".join(chunks)

    async def read_json(self, digest: str) -> Any:
        """Return a blob parsed as JSON."""
        return json.loads(await self.read(digest))


def _snapshot(info: snapshots_pb2.Info) -> Snapshot:
    return Snapshot(name=info.name, labels=dict(info.labels))


class Snapshots(_Service):
    """One snapshotter's snapshots (overlayfs by default)."""

    PREFIX = "containerd.services.snapshots.v1.Snapshots"

    def __init__(self, channel: _Channel, snapshotter: str) -> None:
        super().__init__(channel)
        self.snapshotter = snapshotter

    async def prepare(
        self, key: str, parent: str, *, labels: Mapping[str, str], lease: str | None
    ) -> list[Mount]:
        """Create an active (writable) snapshot on top of ``parent`` and return its mounts."""
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=labels
        )
        response = await self._channel.unary(
            self._method("Prepare"), request, snapshots_pb2.PrepareSnapshotResponse, lease=lease
        )
        return [_mount_from_pb(m) for m in response.mounts]

    async def view(
        self, key: str, parent: str, *, lease: str | None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create a read-only view of ``parent`` and return its mounts."""
        request = snapshots_pb2.ViewSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=labels or {}
        )
        response = await self._channel.unary(
            self._method("View"), request, snapshots_pb2.ViewSnapshotResponse, lease=lease
        )
        return [_mount_from_pb(m) for m in response.mounts]

    async def stat(self, key: str) -> Snapshot:
        """Return a snapshot's metadata."""
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        response = await self._channel.unary(
            self._method("Stat"), request, snapshots_pb2.StatSnapshotResponse
        )
        return _snapshot(response.info)

    async def remove(self, key: str) -> None:
        """Remove a snapshot."""
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        await self._channel.unary(self._method("Remove"), request, empty_pb2.Empty)

    async def list(self, filters: Sequence[str] = ()) -> list[Snapshot]:
        """Return every snapshot matching the filters."""
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=self.snapshotter, filters=filters)
        found: list[Snapshot] = []
        async for page in self._channel.stream(
            self._method("List"), request, snapshots_pb2.ListSnapshotsResponse
        ):
            found.extend(_snapshot(info) for info in page.info)
        return found


class Containers(_Service):
    """Container metadata: id, OCI spec, runtime and snapshot key. Nothing runs here."""

    PREFIX = "containerd.services.containers.v1.Containers"

    async def create(
        self,
        container_id: str,
        *,
        spec: Mapping[str, Any],
        runtime: str,
        runtime_options: RuncOptions,
        image: str,
        labels: Mapping[str, str],
        snapshotter: str = "",
        snapshot_key: str = "",
        lease: str | None = None,
    ) -> None:
        """Store a new container record (with no snapshot, its spec names its root)."""
        options = options_pb2.Options(binary_name=runtime_options.binary_name, root=runtime_options.root)
        container = containers_pb2.Container(
            id=container_id,
            labels=labels,
            image=image,
            runtime=containers_pb2.Container.Runtime(
                name=runtime,
                options=any_pb2.Any(type_url=_RUNC_OPTIONS_TYPE_URL, value=options.SerializeToString()),
            ),
            spec=any_pb2.Any(type_url=_SPEC_TYPE_URL, value=json.dumps(spec).encode()),
            snapshotter=snapshotter,
            snapshot_key=snapshot_key,
        )
        request = containers_pb2.CreateContainerRequest(container=container)
        await self._channel.unary(
            self._method("Create"), request, containers_pb2.CreateContainerResponse, lease=lease
        )

    async def list(self, filters: Sequence[str] = ()) -> list[Container]:
        """Return every container matching the filters."""
        request = containers_pb2.ListContainersRequest(filters=filters)
        response = await self._channel.unary(
            self._method("List"), request, containers_pb2.ListContainersResponse
        )
        return [Container(id=c.id, labels=dict(c.labels)) for c in response.containers]

    async def delete(self, container_id: str) -> None:
        """Delete a container record (its task must be gone)."""
        request = containers_pb2.DeleteContainerRequest(id=container_id)
        await self._channel.unary(self._method("Delete"), request, empty_pb2.Empty)


class Tasks(_Service):
    """Running process trees: a container's init process and everything it starts."""

    PREFIX = "containerd.services.tasks.v1.Tasks"

    async def create(
        self,
        container_id: str,
        *,
        rootfs: Sequence[Mount],
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
    ) -> int:
        """Create the task (the sandbox boots; the init process is not started yet); return its pid."""
        request = tasks_pb2.CreateTaskRequest(
            container_id=container_id,
            rootfs=[_mount_to_pb(m) for m in rootfs],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
        response = await self._channel.unary(self._method("Create"), request, tasks_pb2.CreateTaskResponse)
        return response.pid

    async def start(self, container_id: str) -> int:
        """Start the init process; return its pid."""
        request = tasks_pb2.StartRequest(container_id=container_id)
        response = await self._channel.unary(self._method("Start"), request, tasks_pb2.StartResponse)
        return response.pid

    async def wait(self, container_id: str) -> ExitStatus:
        """Wait, without deadline, until the init process exits."""
        request = tasks_pb2.WaitRequest(container_id=container_id)
        response = await self._channel.unary(
            self._method("Wait"), request, tasks_pb2.WaitResponse, timeout=None
        )
        return ExitStatus(code=response.exit_status)

    async def kill(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        """Send a signal to the init process; ``all_processes`` signals every process of the task."""
        request = tasks_pb2.KillRequest(container_id=container_id, signal=signal, all=all_processes)
        await self._channel.unary(self._method("Kill"), request, empty_pb2.Empty)

    async def delete(self, container_id: str) -> None:
        """Delete a stopped task, which tears the sandbox down."""
        request = tasks_pb2.DeleteTaskRequest(container_id=container_id)
        await self._channel.unary(self._method("Delete"), request, tasks_pb2.DeleteResponse)

    async def get(self, container_id: str) -> ProcessInfo:
        """Return the state of a task's init process."""
        request = tasks_pb2.GetRequest(container_id=container_id)
        response = await self._channel.unary(self._method("Get"), request, tasks_pb2.GetResponse)
        return _process_info(response.process)

    async def list(self) -> list[ProcessInfo]:
        """Return every task in the namespace."""
        response = await self._channel.unary(
            self._method("List"), tasks_pb2.ListTasksRequest(), tasks_pb2.ListTasksResponse
        )
        return [_process_info(p) for p in response.tasks]


def _process_info(process: task_pb2.Process) -> ProcessInfo:
    # ListTasks names a task's container in ``id`` and leaves ``container_id`` empty.
    return ProcessInfo(
        container_id=process.container_id or process.id,
        status=_TASK_STATUS.get(process.status, TaskStatus.UNKNOWN),
    )


class Leases(_Service):
    """Leases keep resources from garbage collection until they are deleted or expire."""

    PREFIX = "containerd.services.leases.v1.Leases"

    async def create(
        self, lease_id: str, *, expires_in: dt.timedelta | None, labels: Mapping[str, str]
    ) -> None:
        """Create a lease that containerd's garbage collector drops after ``expires_in`` (None: never)."""
        labels = dict(labels)
        if expires_in is not None:
            labels[_GC_EXPIRE_LABEL] = (dt.datetime.now(dt.UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%SZ")
        request = leases_pb2.CreateRequest(id=lease_id, labels=labels)
        await self._channel.unary(self._method("Create"), request, leases_pb2.CreateResponse)

    async def delete(self, lease_id: str) -> None:
        """Delete a lease; what only it referenced becomes garbage."""
        request = leases_pb2.DeleteRequest(id=lease_id)
        await self._channel.unary(self._method("Delete"), request, empty_pb2.Empty)

    async def list(self, filters: Sequence[str] = ()) -> list[Lease]:
        """Return every lease matching the filters."""
        request = leases_pb2.ListRequest(filters=filters)
        response = await self._channel.unary(self._method("List"), request, leases_pb2.ListResponse)
        return [Lease(id=lease.id, labels=dict(lease.labels)) for lease in response.leases]


@attrs.frozen
class Version:
    """containerd's version as the daemon reports it."""

    version: str
    revision: str


class ContainerdClient:
    """containerd's services for one namespace, over one channel."""

    def __init__(
        self,
        address: str,
        namespace: str,
        *,
        snapshotter: str = "overlayfs",
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """``on_error`` hears the method of every failed call (for metrics)."""
        self._channel = _Channel(address, namespace, on_error)
        self.address = address
        self.namespace = namespace
        self.images = Images(self._channel)
        self.content = Content(self._channel)
        self.snapshots = Snapshots(self._channel, snapshotter)
        self.containers = Containers(self._channel)
        self.tasks = Tasks(self._channel)
        self.leases = Leases(self._channel)

    async def version(self, *, timeout: float = DEFAULT_RPC_TIMEOUT) -> Version:
        """Ask containerd for its version; the cheapest way to see that it answers."""
        response = await self._channel.unary(
            "/containerd.services.version.v1.Version/Version",
            empty_pb2.Empty(),
            version_pb2.VersionResponse,
            timeout=timeout,
        )
        return Version(version=response.version, revision=response.revision)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.channel.close(grace=None)


__all__ = [
    "Container",
    "ContainerdClient",
    "ContainerdError",
    "Descriptor",
    "ExitStatus",
    "Image",
    "Lease",
    "Mount",
    "ProcessInfo",
    "RuncOptions",
    "Snapshot",
    "TaskStatus",
    "Version",
]
