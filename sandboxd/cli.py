"""The ``sandboxd`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import attrs
from aiohttp import web

from sandboxd.api.app import create_app, serving_status
from sandboxd.api.auth import add_key, generate_key, hash_key
from sandboxd.api.state import NOTIFIER
from sandboxd.config import Config, ConfigError, load_config
from sandboxd.containerd import ContainerdError
from sandboxd.engine.engine import (
    Engine,
    RuntimeUnavailableError,
    UnsupportedLanguageError,
    UnsupportedVersionError,
)
from sandboxd.engine.host import StartupError, client_for, connect
from sandboxd.images.inspect import RUNTIME_LABEL, image_build_dir, inspect_image, stale_images
from sandboxd.images.usage import DiskUsage, gib, image_usage, tree_bytes
from sandboxd.models import ExecutionRequest, ExecutionStatus
from sandboxd.ops.doctor import checks
from sandboxd.ops.logging import configure_logging
from sandboxd.runtimes import ImageRecipe, Runtime, RuntimeConfigError, RuntimeRegistry, load_runtimes
from sandboxd.service.store import StoreUnavailableError, open_store
from sandboxd.validation import InvalidFieldError, ValidationError, converter

log = logging.getLogger("sandboxd")


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config, os.environ)
    configure_logging(args.log_level or config.logging.level, config.logging.format)
    return config


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _serve(args: argparse.Namespace) -> int:
    config = _config(args)
    app = create_app(config)

    def listening(_: str) -> None:
        # run_app calls this once its sockets listen: only now is the daemon ready.
        log.info("listening on http://%s:%d", config.server.host, config.server.port)
        app[NOTIFIER].ready(serving_status(app))

    web.run_app(
        app,
        host=config.server.host,
        port=config.server.port,
        print=listening,
        access_log=None,
        shutdown_timeout=config.server.shutdown_grace,
    )
    return 0


def _select(runtimes: Sequence[Runtime], names: Sequence[str]) -> list[Runtime]:
    if not names:
        return list(runtimes)
    by_name = {key: rt for rt in runtimes for key in (rt.name, *rt.aliases)}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise SystemExit(f"sandboxd: unknown runtime(s): {', '.join(unknown)}")
    selected: dict[str, Runtime] = {}
    for name in names:
        runtime: Runtime | None = by_name[name]
        # A runtime's image is built on the one it extends: that one is built (or found current) first.
        while runtime is not None and runtime.name not in selected:
            selected[runtime.name] = runtime
            runtime = by_name.get(runtime.build.extends) if runtime.build.extends else None
    return list(selected.values())


async def _images_build(config: Config, names: Sequence[str], force: bool, jobs: int) -> int:
    # Imported here, not at the top: `sandboxd serve` runs this module too, and the daemon
    # never builds images (it only inspects them).
    from sandboxd.images.build import ImageBuilder  # noqa: PLC0415
    from sandboxd.images.progress import BuildProgress  # noqa: PLC0415

    runtimes = _select(load_runtimes(config.paths.runtimes).runtimes, names)
    client = client_for(config)
    work = image_build_dir(config)
    progress = BuildProgress(
        [runtime.name for runtime in runtimes], sys.stdout, work / "logs", redraw=sys.stdout.isatty()
    )

    async def tick() -> None:
        while True:
            await asyncio.sleep(1.0)
            progress.tick()

    try:
        await connect(client)
        builder = ImageBuilder(client, work, progress)
        started = time.monotonic()
        ticking = asyncio.ensure_future(tick())
        try:
            failed = await builder.build_many(runtimes, jobs=jobs, force=force)
        finally:
            ticking.cancel()
        ready, took = len(runtimes) - len(failed), time.monotonic() - started
        print(f"images: {ready} of {len(runtimes)} ready in {took:.0f} s", flush=True)
    finally:
        await client.close()
    for name in sorted(failed):
        print(f"sandboxd: building {name} failed; its full log: {progress.log_path(name)}", file=sys.stderr)
    return 1 if failed else 0


async def _images_list(config: Config) -> int:
    client = client_for(config)
    try:
        await connect(client)
        row = "{:<12} {:<10} {:<48} {:>9} {:>9}  {}"
        print(row.format("RUNTIME", "AVAILABLE", "IMAGE", "STORED", "UNPACKED", "VERSION / REASON"))
        usages = []
        for runtime in load_runtimes(config.paths.runtimes):
            state = await inspect_image(client, runtime)
            stored = unpacked = ""
            if state.available:
                usage = await image_usage(client, state)
                usages.append(usage)
                stored, unpacked = _mib(usage.stored), _mib(usage.unpacked)
            detail = state.version if state.available else state.reason
            available = "yes" if state.available else "no"
            print(row.format(runtime.name, available, runtime.image, stored, unpacked, detail))
        # Each image was measured once, for its row; the total counts what they share once.
        total = DiskUsage(tuple(usages))
        build = image_build_dir(config)
        cache = await asyncio.to_thread(tree_bytes, build) if build.is_dir() else 0
        print(
            f"images take {gib(total.total)}: {gib(total.stored)} of blobs in containerd's content store, "
            f"{gib(total.unpacked)} unpacked (what images share counted once, in each row too); "
            f"builds keep {gib(cache)} more in {build} (what they have not handed to containerd yet)"
        )
    finally:
        await client.close()
    return 0


async def _images_prune(config: Config, *, dry_run: bool) -> int:
    client = client_for(config)
    try:
        await connect(client)
        stale = await stale_images(client, load_runtimes(config.paths.runtimes))
        for image in stale:
            runtime = image.labels.get(RUNTIME_LABEL, "?")
            if not dry_run:
                await client.images.delete(image.name)
            print(f"{'would delete' if dry_run else 'deleted'} {image.name} (built for runtime {runtime})")
        what = "would go" if dry_run else "went"
        print(f"images: {len(stale)} stale {what}; what no other image shares is freed with them")
    finally:
        await client.close()
    return 0


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


def image_source(recipe: ImageRecipe) -> str:
    """Where a runtime's image comes from, for the README's languages table."""
    parts = [f"Debian {recipe.suite}"]
    parts += [f"npm {name} {version}" for name, version in sorted(recipe.npm.items())]
    parts += [f"PyPI {name} {version}" for name, version in sorted(recipe.pip.items())]
    if recipe.extends is not None:
        parts.append(f"on the {recipe.extends} image")
    if recipe.note is not None:
        parts.append(recipe.note)
    return "; ".join(parts)


def _markdown(engine: Engine, registry: RuntimeRegistry) -> str:
    """The languages as a Markdown table: what each image says it is, and where it comes from."""
    rows = ["| runtime | language | version | aliases | version line (the image's own) | from |"]
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for info in engine.languages():
        runtime = registry.get(info.runtime)
        source = image_source(runtime.build) if runtime is not None else ""
        line = info.version_string if info.available else f"not built: {info.reason}"
        aliases = ", ".join(info.aliases) or "-"
        rows.append(
            f"| {info.runtime} | {info.language} | {info.version or '-'} | {aliases} | {line} | {source} |"
        )
    return "\n".join(rows)


async def _runtimes(config: Config, *, markdown: bool) -> int:
    client = client_for(config)
    try:
        await connect(client)
        engine = await Engine.open(config, client, reconcile_leftovers=False)
        if markdown:
            print(_markdown(engine, load_runtimes(config.paths.runtimes)))
            return 0
        columns = f"{'RUNTIME':<12} {'AVAILABLE':<10} {'LANGUAGE':<12} {'VERSION':<10} {'ALIASES':<20}"
        print(f"{columns} VERSION LINE / REASON")
        for info in engine.languages():
            detail = info.version_string if info.available else info.reason
            aliases = ",".join(info.aliases) or "-"
            print(
                f"{info.runtime:<12} {'yes' if info.available else 'no':<10} {info.language:<12} "
                f"{info.version or '-':<10} {aliases:<20} {detail}"
            )
    finally:
        await client.close()
    return 0


async def _doctor(config: Config) -> int:
    failed = 0
    async for check in checks(config):
        print(check.line(), flush=True)
        failed += not check.ok
    print(f"{failed} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0


async def _hosts(config: Config) -> int:
    store = await open_store(config, "cli", migrate=False)
    try:
        if await store.schema_version() < store.latest_version:
            print("sandboxd: the store's schema is not current: start `sandboxd serve` once", file=sys.stderr)
            return 1
        hosts = await store.hosts()
    finally:
        await store.close()
    now = time.time()
    print(f"{'HOST':<32} {'ADDRESS':<22} {'SLOTS':>5} {'HEARTBEAT':>10}  RUNTIMES")
    for host in hosts:
        age = now - host.heartbeat_at
        state = f"{age:.0f}s ago" + ("" if age <= config.store.lease_seconds else " (gone)")
        print(
            f"{host.host_id:<32} {host.address:<22} {host.capacity:>5} {state:>10}  {','.join(host.runtimes)}"
        )
    return 0


async def _run_file(config: Config, args: argparse.Namespace) -> int:
    code = args.file.read_text()
    stdin = args.stdin.read_text() if args.stdin else None
    request = ExecutionRequest(
        code=code, language=args.language, version=args.version, stdin=stdin, timeout=args.timeout
    )
    # A one-off engine: no pool to keep sandboxes for later, no daemon loops.
    config = attrs.evolve(config, pool=attrs.evolve(config.pool, enabled=False))
    client = client_for(config)
    try:
        await connect(client)
        engine = await Engine.open(config, client, reconcile_leftovers=False)
        try:
            result, _ = await engine.execute(engine.plan(request), str(uuid.uuid4()))
        finally:
            await engine.close()  # its sandbox, and its image's shared root
    finally:
        await client.close()
    print(json.dumps(converter.unstructure(result), indent=2))
    return 0 if result.status is ExecutionStatus.COMPLETED and result.exit_code == 0 else 1


def _keys_add(args: argparse.Namespace) -> int:
    if args.config is None:
        raise SystemExit("sandboxd: keys add needs --config FILE (the key's hash is stored there)")
    key = add_key(args.config, args.name, args.rate_limit)
    print(f"API key {args.name!r} added to {args.config} (only its hash is stored).")
    print(f"The key, shown this once:\n\n  {key}\n")
    print("Restart sandboxd for it to take effect.")
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    key = generate_key()
    print(f"API key for {args.name} (shown once; store it now):\n\n  {key}\n")
    print("Add to the configuration file:\n")
    print(f'[[api_keys]]\nname = "{args.name}"\nsha256 = "{hash_key(key)}"')
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandboxd", description="Run untrusted code in gVisor sandboxes.")
    parser.add_argument("--config", type=Path, help="configuration file (TOML)")
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides [logging] level"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API")
    images = commands.add_parser("images", help="runtime images").add_subparsers(
        dest="images_command", required=True
    )
    build = images.add_parser("build", help="build runtime images from Debian packages and import them")
    build.add_argument("languages", nargs="*", help="runtimes to build (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even when the image is current")
    build.add_argument(
        "--jobs", type=_positive_int, default=4, metavar="N",
        help="images to build at once (default: 4; builds wait on downloads and disk as much as on CPUs)",
    )  # fmt: skip
    images.add_parser("list", help="show each runtime's image and whether it is available")
    prune = images.add_parser(
        "prune", help="delete images built for runtimes no runtime file names any more (a toolchain replaced)"
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    generate = keys.add_parser("generate", help="print a new API key and the configuration entry for it")
    generate.add_argument("name")
    add = keys.add_parser(
        "add", help="add a new API key's hash to the configuration file; print the key once"
    )
    add.add_argument("name")
    add.add_argument("--rate-limit", type=int, help="executions per minute for this key")
    runtimes = commands.add_parser("runtimes", help="runtimes with their version and availability")
    runtimes.add_argument(
        "--markdown",
        action="store_true",
        help="as a Markdown table (scripts/languages-table puts it in the README)",
    )
    commands.add_parser("doctor", help="check containerd, runsc, cgroups, images, disk, keys and the store")
    commands.add_parser("hosts", help="the hosts sharing the store, with their last heartbeat")
    run = commands.add_parser("run", help="run one file through the engine and print the result")
    run.add_argument("file", type=Path)
    run.add_argument("--language", "-l", required=True)
    run.add_argument("--version", help="a version of the language, such as 3.11 (a prefix of its number)")
    run.add_argument("--stdin", type=Path, help="file whose content is the program's standard input")
    run.add_argument("--timeout", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 -- one return per command
    """Entry point of the ``sandboxd`` command."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level or "INFO", "text")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "keys":
            return _keys_add(args) if args.keys_command == "add" else _keys_generate(args)
        config = _config(args)
        if args.command == "runtimes":
            return asyncio.run(_runtimes(config, markdown=args.markdown))
        if args.command == "doctor":
            return asyncio.run(_doctor(config))
        if args.command == "hosts":
            return asyncio.run(_hosts(config))
        if args.command == "run":
            return asyncio.run(_run_file(config, args))
        if args.images_command == "build":
            return asyncio.run(_images_build(config, args.languages, args.force, args.jobs))
        if args.images_command == "prune":
            return asyncio.run(_images_prune(config, dry_run=args.dry_run))
        return asyncio.run(_images_list(config))
    except (
        ValidationError,
        InvalidFieldError,
        UnsupportedLanguageError,
        UnsupportedVersionError,
        RuntimeUnavailableError,
    ) as error:
        print(f"sandboxd: {error}", file=sys.stderr)
        return 2
    except (ConfigError, RuntimeConfigError, StartupError) as error:
        print(f"sandboxd: {error}", file=sys.stderr)
        return 1
    except ContainerdError as error:
        print(f"sandboxd: containerd: {error}", file=sys.stderr)
        return 1
    except StoreUnavailableError as error:
        print(f"sandboxd: store: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
