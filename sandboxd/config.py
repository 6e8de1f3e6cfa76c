"""The daemon's configuration: one TOML file, validated as a whole, plus a few environment overrides."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from sandboxd.validation import ValidationError, check, positive, structure

DEV_KEYS_VARIABLE: Final = "SANDBOXD_API_KEYS"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The shortest webhook secret accepted: 128 bits of hex, or more of anything else.
MIN_WEBHOOK_SECRET: Final = 32


def _webhook_secret(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value:
        check(
            len(value) >= MIN_WEBHOOK_SECRET,
            attribute.name,
            f"must be at least {MIN_WEBHOOK_SECRET} characters (e.g. `openssl rand -hex 32`)",
        )


@attrs.frozen
class ApiKey:
    """A client's key, stored as its SHA-256 hash; ``rate_limit`` is executions per minute."""

    name: str
    sha256: str
    rate_limit: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    # Signs the webhook deliveries of this key's executions (kept in plain: signing needs the secret).
    webhook_secret: str | None = attrs.field(default=None, validator=_webhook_secret, repr=False)

    def __attrs_post_init__(self) -> None:
        check(bool(_KEY_NAME.match(self.name)), "name", "must be 1-64 characters of A-Z a-z 0-9 . _ -")
        check(
            bool(_SHA256.match(self.sha256)),
            "sha256",
            "must be 64 lower-case hex digits (sandboxd keys generate)",
        )


@attrs.frozen
class ServerConfig:
    """Where the HTTP API listens."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8002, validator=positive)
    # Room for a request's files (limits.files_bytes) in base64, with its code and stdin.
    max_body_bytes: int = attrs.field(default=8 << 20, validator=positive)
    # At SIGTERM: how long running executions may go on before they are cancelled.
    shutdown_grace: float = attrs.field(default=30.0, validator=positive)
    # An idle event stream sends a comment this often, so that proxies keep it open.
    heartbeat_seconds: float = attrs.field(default=15.0, validator=positive)


@attrs.frozen
class HealthConfig:
    """Where the gRPC health service (grpc.health.v1.Health) listens."""

    address: str = "127.0.0.1:8003"

    def __attrs_post_init__(self) -> None:
        host, _, port = self.address.rpartition(":")
        check(bool(host) and port.isdigit() and int(port) < 65536, "address", "must be host:port")


@attrs.frozen
class LoggingConfig:
    """Log format and level; code, stdin and output are logged only at DEBUG."""

    format: str = "text"
    level: str = "INFO"

    def __attrs_post_init__(self) -> None:
        check(self.format in ("text", "json"), "format", "must be text or json")
        check(
            self.level in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "level",
            "must be DEBUG, INFO, WARNING or ERROR",
        )


@attrs.frozen
class ContainerdConfig:
    """Which containerd to drive, and where in it sandboxd keeps its objects."""

    address: str = "/run/containerd/containerd.sock"
    namespace: str = "sandboxd"
    snapshotter: str = "overlayfs"


@attrs.frozen
class RunscConfig:
    """The gVisor runtime."""

    binary: str = "/usr/bin/runsc"
    platform: str = "ptrace"

    def __attrs_post_init__(self) -> None:
        check(self.platform in ("ptrace", "kvm", "systrap"), "platform", "must be ptrace, kvm or systrap")


@attrs.frozen
class PathsConfig:
    """Directories: runtime definitions, volatile state (FIFOs, workspaces) and persistent data."""

    runtimes: Path = Path("/etc/sandboxd/runtimes")
    state: Path = Path("/run/sandboxd")
    data: Path = Path("/var/lib/sandboxd")


@attrs.frozen
class LimitsConfig:
    """Daemon-wide limits."""

    concurrency: int = attrs.field(factory=lambda: os.cpu_count() or 1, validator=positive)
    queue: int = attrs.field(default=64, validator=positive)
    output_bytes: int = attrs.field(default=1 << 20, validator=positive)
    code_bytes: int = attrs.field(default=64 << 10, validator=positive)
    stdin_bytes: int = attrs.field(default=1 << 20, validator=positive)
    # The request's files, decoded, in all (they share the workspace with what the program writes).
    files_bytes: int = attrs.field(default=4 << 20, validator=positive)
    workspace_mib: int = attrs.field(default=32, validator=positive)
    tmp_mib: int = attrs.field(default=64, validator=positive)
    file_size_mib: int = attrs.field(default=32, validator=positive)
    open_files: int = attrs.field(default=256, validator=positive)
    rate_limit: int = attrs.field(default=600, validator=positive)
    async_queue: int = attrs.field(default=1000, validator=positive)
    retention_hours: float = attrs.field(default=24.0, validator=positive)
    # Event streams (live output) this host serves at once.
    event_streams: int = attrs.field(default=256, validator=positive)

    def __attrs_post_init__(self) -> None:
        check(
            self.files_bytes < self.workspace_mib << 20,
            "files_bytes",
            f"must be less than the workspace ({self.workspace_mib} MiB)",
        )


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    check(value >= 0, attribute.name, f"must be zero or more, got {value}")


def _optional_non_negative(_instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _non_negative(_instance, attribute, value)


@attrs.frozen
class PoolSizeConfig:
    """How many idle sandboxes one runtime keeps ready; what it leaves out, ``[pool]`` says."""

    min: int | None = attrs.field(default=None, validator=_optional_non_negative)
    max: int | None = attrs.field(default=None, validator=_optional_non_negative)


@attrs.frozen
class PoolConfig:
    """Pre-booted sandboxes: sizes follow demand between min and max, within a memory budget."""

    enabled: bool = True
    memory_budget_mib: int = attrs.field(default=1024, validator=positive)
    # A runtime's pool shrinks back to its minimum once unused this long.
    idle_seconds: float = attrs.field(default=300.0, validator=positive)
    min: int = attrs.field(default=0, validator=_non_negative)
    # As many as a batch holds: a batch's sandboxes are all booted ahead while it runs.
    max: int = attrs.field(default=10, validator=_non_negative)
    runtimes: dict[str, PoolSizeConfig] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        check(self.max >= self.min, "max", f"must be at least min ({self.min}), got {self.max}")
        for name in self.runtimes:
            low, high = self.bounds(name)
            check(high >= low, f"runtimes.{name}.max", f"must be at least min ({low}), got {high}")

    def bounds(self, runtime: str) -> tuple[int, int]:
        """(min, max) idle sandboxes of ``runtime``: its own table's where it sets them, else the pool's."""
        own = self.runtimes.get(runtime, PoolSizeConfig())
        return (self.min if own.min is None else own.min, self.max if own.max is None else own.max)


_HOST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@attrs.frozen
class StoreConfig:
    """Where records, the asynchronous queue, rate limits and hosts live: SQLite, or a shared PostgreSQL.

    ``url`` is ``sqlite:`` (the data directory's ``executions.sqlite3``), ``sqlite:///PATH``,
    or ``postgresql://...`` (a libpq URL) for several hosts sharing one database.
    """

    url: str = "sqlite:"
    # This host's name in claims and in the hosts table; default: host name and state directory.
    host_id: str = ""
    # How long a host's claim on an execution lasts unless renewed (renewed every third of it).
    lease_seconds: float = attrs.field(default=30.0, validator=positive)
    # How often the queue is looked at without a notification (PostgreSQL's LISTEN is the fast path).
    poll_seconds: float = attrs.field(default=5.0, validator=positive)
    pool_size: int = attrs.field(default=10, validator=positive)
    # Waiting for a connection longer than this is the store being unavailable (a 503).
    connect_timeout: float = attrs.field(default=3.0, validator=positive)
    # Results of synchronous executions kept in memory while the store is unreachable.
    pending_writes: int = attrs.field(default=10000, validator=positive)

    def __attrs_post_init__(self) -> None:
        check(
            self.url.startswith(("sqlite:", "postgresql://")),
            "url",
            "must start with sqlite: or postgresql://",
        )
        if self.url.startswith("sqlite:"):
            path = self.url.removeprefix("sqlite:")
            check(path == "" or path.startswith("///"), "url", "must be sqlite: or sqlite:///ABSOLUTE/PATH")
        check(
            self.host_id == "" or bool(_HOST_ID.match(self.host_id)),
            "host_id",
            "must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        )


@attrs.frozen
class WebhooksConfig:
    """Deliveries of asynchronous results to the ``callback_url`` of their request."""

    # Signs deliveries for keys without a webhook_secret of their own; with neither, such a
    # key's requests cannot have a callback_url. Every receiver that knows it can verify
    # (and forge) deliveries of all those keys: give keys of different clients their own.
    secret: str = attrs.field(default="", validator=_webhook_secret, repr=False)
    # Networks deliveries may go to although they are loopback, private, link-local, shared
    # or reserved (by default only public addresses are reached), e.g. ["10.1.2.0/24"].
    allow_networks: tuple[str, ...] = ()
    # A delivery is retried with exponential backoff, from first_retry_seconds doubling up to
    # max_retry_seconds, until it has made max_attempts or max_age_hours have passed.
    first_retry_seconds: float = attrs.field(default=10.0, validator=positive)
    max_retry_seconds: float = attrs.field(default=3600.0, validator=positive)
    max_attempts: int = attrs.field(default=30, validator=positive)
    max_age_hours: float = attrs.field(default=24.0, validator=positive)
    # One attempt: connecting, then the whole exchange; a slower receiver counts as failed.
    connect_timeout: float = attrs.field(default=5.0, validator=positive)
    timeout: float = attrs.field(default=15.0, validator=positive)
    # Attempts in flight at once on this host.
    concurrency: int = attrs.field(default=8, validator=positive)

    def __attrs_post_init__(self) -> None:
        for network in self.allow_networks:
            try:
                ipaddress.ip_network(network)
            except ValueError as error:
                check(False, "allow_networks", f"{network!r} is not a network like 10.0.0.0/8 ({error})")
        check(
            self.max_retry_seconds >= self.first_retry_seconds,
            "max_retry_seconds",
            f"must be at least first_retry_seconds ({self.first_retry_seconds:g})",
        )
        check(
            self.timeout >= self.connect_timeout,
            "timeout",
            f"must be at least connect_timeout ({self.connect_timeout:g})",
        )


@attrs.frozen
class Config:
    """Everything the daemon is told; every section is optional."""

    server: ServerConfig = ServerConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()
    containerd: ContainerdConfig = ContainerdConfig()
    runsc: RunscConfig = RunscConfig()
    paths: PathsConfig = PathsConfig()
    limits: LimitsConfig = LimitsConfig()
    pool: PoolConfig = PoolConfig()
    store: StoreConfig = StoreConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    api_keys: tuple[ApiKey, ...] = ()
    # Plain keys from SANDBOXD_API_KEYS, for development; never read from the file.
    dev_keys: tuple[str, ...] = attrs.field(default=(), repr=False)

    def __attrs_post_init__(self) -> None:
        names = [key.name for key in self.api_keys]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        check(not duplicated, "api_keys", f"names used twice: {', '.join(duplicated)}")

    def webhook_secret(self, owner: str) -> str | None:
        """The secret that signs deliveries for the key named ``owner``: its own, else the daemon's."""
        own = next((key.webhook_secret for key in self.api_keys if key.name == owner), None)
        return own or self.webhooks.secret or None


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}:\n  " + "\n  ".join(problems))
        self.problems = problems


def _path_hook(data: Mapping[str, Any]) -> dict[str, Any]:
    paths = data.get("paths")
    if isinstance(paths, dict):
        return {**data, "paths": {k: Path(v) if isinstance(v, str) else v for k, v in paths.items()}}
    return dict(data)


def load_config(path: Path | None, environ: Mapping[str, str]) -> Config:
    """Read the TOML file (if any), apply environment overrides, and validate everything at once."""
    source = str(path) if path else "configuration"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as error:
            raise ConfigError(source, [f"cannot read: {error.strerror}"]) from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(source, [f"not valid TOML: {error}"]) from error
    if "dev_keys" in data:
        raise ConfigError(source, ["dev_keys: unknown field (plain keys belong in SANDBOXD_API_KEYS only)"])
    overridden = _apply_environment(data, environ)
    if overridden:
        source += " with " + ", ".join(overridden)
    dev_keys = [key.strip() for key in environ.get(DEV_KEYS_VARIABLE, "").split(",") if key.strip()]
    try:
        config = structure(_path_hook(data), Config)
    except ValidationError as error:
        raise ConfigError(source, error.problems) from error
    return attrs.evolve(config, dev_keys=tuple(dev_keys))


def _environment_variable(section: str, key: str) -> str:
    return f"SANDBOXD_{section}_{key}".upper()


def environment_variables() -> dict[str, tuple[str, str, type[Any]]]:
    """Every setting's override variable, e.g. SANDBOXD_SERVER_PORT -> ("server", "port", int)."""
    variables = {}
    for section_name, section in typing.get_type_hints(Config).items():
        if attrs.has(section):
            for key, kind in typing.get_type_hints(section).items():
                variables[_environment_variable(section_name, key)] = (section_name, key, kind)
    return variables


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Let SANDBOXD_<SECTION>_<KEY> override single settings (for container deployments)."""
    applied = []
    for variable, (section, key, kind) in environment_variables().items():
        if variable not in environ:
            continue
        raw: Any = environ[variable]
        # Convert what converts; anything else stays a string, so validation names the setting.
        if kind is bool and raw.strip().lower() in {"true", "false", "1", "0"}:
            raw = raw.strip().lower() in {"true", "1"}
        elif typing.get_origin(kind) is tuple:  # a list, comma-separated
            raw = [item.strip() for item in raw.split(",") if item.strip()]
        elif kind is int and raw.strip().lstrip("-").isdigit():
            raw = int(raw)
        elif kind is float:
            with contextlib.suppress(ValueError):
                raw = float(raw)
        data.setdefault(section, {})[key] = raw
        applied.append(variable)
    return applied
