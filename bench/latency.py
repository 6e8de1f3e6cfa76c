"""Benchmark: synchronous latency of a hello program per language, against `runsc do` as baseline.

Runs against a sandboxd already serving (scripts/dev run). For each language it
times N sequential POST /api/v1/execute requests, then N runs of the same
program under `runsc do` on the same image's root filesystem, and prints p50,
p95 and their ratio. Results are also written as JSON.

    .venv/bin/python bench/latency.py --runs 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sandboxd.config import load_config
from sandboxd.containerd import NotFoundError
from sandboxd.host import client_for
from sandboxd.images import inspect_image
from sandboxd.runtimes import Runtime, load_runtimes

HELLO = {
    "python": "print('hello')",
    "javascript": "console.log('hello')",
    "go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello") }',
    "ruby": "puts 'hello'",
}
DEV_KEY_FILE = Path("/var/lib/sandboxd-dev/api-key")


def percentile(samples: list[float], fraction: float) -> float:
    """The sample at ``fraction`` of the sorted list (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def time_runs(runs: int, once: Callable[[], None]) -> list[float]:
    """Wall times of ``runs`` calls, after one warm-up call."""
    once()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        once()
        samples.append(time.perf_counter() - started)
    return samples


def http_once(url: str, key: str, language: str) -> Callable[[], None]:
    """One synchronous execution over HTTP; fails loudly on anything but the expected output."""
    body = json.dumps({"code": HELLO[language], "language": language}).encode()

    def once() -> None:
        request = urllib.request.Request(  # noqa: S310 -- the operator's URL
            f"{url}/api/v1/execute",
            data=body,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 -- the operator's URL
            result = json.load(response)
        if result["stdout"] != "hello\n":
            raise SystemExit(f"{language}: unexpected result {result}")

    return once


def runsc_once(runsc: str, rootfs: str, runtime: Runtime) -> Callable[[], None]:
    """The same program under `runsc do` on the image's root filesystem (compile step included)."""
    steps = (
        [" ".join(runtime.compile), " ".join(runtime.run)] if runtime.compiled else [" ".join(runtime.run)]
    )
    script = f"cd /tmp && cat > {runtime.source_file} && " + " && ".join(steps)
    env = [f"{k}={v}" for k, v in runtime.environment.items()]
    argv = [runsc, "--network=none", "--platform=ptrace", "do", "-quiet", "-root", rootfs]
    argv += ["/usr/bin/env", "-i", *env, "/bin/sh", "-c", script]
    source = HELLO[runtime.name].encode()

    def once() -> None:
        done = subprocess.run(argv, input=source, capture_output=True, check=False)
        if done.stdout != b"hello\n":
            raise SystemExit(f"{runtime.name}: runsc do printed {done.stdout!r} {done.stderr[-500:]!r}")

    return once


@contextlib.asynccontextmanager
async def image_rootfs(config_path: Path, runtime: Runtime) -> AsyncIterator[str]:
    """A read-only view of the runtime image's root filesystem as a host directory, removed afterwards."""
    config = load_config(config_path, os.environ)
    client = client_for(config)
    key = f"sandboxd-bench-{runtime.name}-{os.getpid()}"
    try:
        state = await inspect_image(client, runtime)
        if not state.available or state.chain_id is None:
            raise SystemExit(f"{runtime.name}: {state.reason}")
        # Without a lease, containerd's garbage collector removes an unreferenced view at once.
        await client.leases.create(key, expires_in=dt.timedelta(hours=1), labels={})
        try:
            mounts = await client.snapshots.view(key, state.chain_id, lease=key)
            if len(mounts) != 1 or mounts[0].type != "bind":
                raise SystemExit(f"{runtime.name}: only single-layer images are benchmarked against runsc do")
            yield mounts[0].source
        finally:
            with contextlib.suppress(NotFoundError):
                await client.snapshots.remove(key)
            await client.leases.delete(key)
    finally:
        await client.close()


async def baseline(config_path: Path, runsc: str, runtime: Runtime, runs: int) -> list[float]:
    """Time ``runs`` runs of the hello program under `runsc do`."""
    async with image_rootfs(config_path, runtime) as rootfs:
        return await asyncio.to_thread(time_runs, runs, runsc_once(runsc, rootfs, runtime))


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8002")
    parser.add_argument("--api-key", default=os.environ.get("SANDBOXD_API_KEY"))
    parser.add_argument("--config", type=Path, default=Path("/var/lib/sandboxd-dev/config.toml"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--languages", nargs="*", default=list(HELLO))
    parser.add_argument("--runsc", default="/usr/bin/runsc")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "latency.json")
    args = parser.parse_args()
    key = args.api_key or (DEV_KEY_FILE.read_text().strip() if DEV_KEY_FILE.exists() else None)
    if not key:
        raise SystemExit("no API key: pass --api-key or set SANDBOXD_API_KEY")
    config = load_config(args.config, os.environ)
    runtimes = load_runtimes(config.paths.runtimes)
    rows: list[dict[str, Any]] = []
    print(f"{'language':<12}{'sandboxd p50':>14}{'p95':>9}{'runsc do p50':>15}{'p95':>9}{'ratio p50':>11}")
    for language in args.languages:
        runtime = runtimes.get(language)
        if runtime is None:
            raise SystemExit(f"unknown language {language}")
        served = time_runs(args.runs, http_once(args.url, key, language))
        reference = asyncio.run(baseline(args.config, args.runsc, runtime, args.runs))
        row = {
            "language": language,
            "runs": args.runs,
            "sandboxd_p50": percentile(served, 0.5),
            "sandboxd_p95": percentile(served, 0.95),
            "runsc_do_p50": percentile(reference, 0.5),
            "runsc_do_p95": percentile(reference, 0.95),
            "sandboxd_mean": statistics.fmean(served),
        }
        row["ratio_p50"] = row["sandboxd_p50"] / row["runsc_do_p50"]
        rows.append(row)
        ms = {name: f"{value * 1000:.0f}ms" for name, value in row.items() if isinstance(value, float)}
        print(
            f"{language:<12}{ms['sandboxd_p50']:>14}{ms['sandboxd_p95']:>9}"
            f"{ms['runsc_do_p50']:>15}{ms['runsc_do_p95']:>9}{row['ratio_p50']:>10.2f}x",
            flush=True,
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
