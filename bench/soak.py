"""Soak: many executions, a tenth of them hostile, then count everything they could have leaked.

Runs against a sandboxd already serving. Prints the status of every execution,
the daemon's RSS before and after, and how many sandboxd containers, tasks,
snapshots, leases, mounts, FIFO directories, workspaces and runsc or shim
processes remain. Exits 1 when anything remains or RSS grew by 20 MB or more.

    .venv/bin/python bench/soak.py --count 1000 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Final

import aiohttp

from sandboxd.config import load_config
from sandboxd.engine.host import client_for
from sandboxd.engine.sandbox import MANAGED_LABEL

NORMAL: Final = [
    ("python", "print(sum(range(1000)))", None),
    ("javascript", "console.log([1, 2, 3].map(x => x * 2).join(','))", None),
    ("ruby", "puts (1..10).reduce(:+)", None),
    ("go", 'package main\nimport "fmt"\nfunc main() { fmt.Println(6 * 7) }', None),
]
HOSTILE: Final = [
    ("python", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", 3),
    ("python", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))", 10),
    ("python", "import os\nos.execvp('yes', ['yes'])", 5),
    ("python", "f = open('/workspace/x', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))", 5),
    ("python", "import time\ntime.sleep(600)", 1),
    (
        "python",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\nprint('parent')",
        5,
    ),
    ("python", "import ctypes\nctypes.string_at(0)", 5),
    ("javascript", "const a = [];\nwhile (true) { a.push(new Array(1e6).fill(1)); }", 10),
]
RSS_BUDGET: Final = 20 << 20


def daemon_pid() -> int:
    """The pid of the one `sandboxd ... serve` process on this host."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"sandboxd") for a in argv[:3]) and b"serve" in argv:
                found.append(int(entry.name))
    if len(found) != 1:
        raise SystemExit(f"expected one running `sandboxd serve`, found {found}; pass --daemon-pid")
    return found[0]


def rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no VmRSS for {pid}")


def runtime_processes() -> int:
    """Count the runsc and containerd-shim processes serving the sandboxd namespace."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if (b"runsc" in cmdline or b"containerd-shim" in cmdline) and b"sandboxd" in cmdline:
                count += 1
    return count


async def leftovers(config_path: Path) -> dict[str, int]:
    """Count what sandboxd left in containerd, the mount table and its state directory."""
    config = load_config(config_path, os.environ)
    client = client_for(config)
    managed = [f'labels."{MANAGED_LABEL}"']
    state = config.paths.state
    try:
        counts = {
            "containers": len(await client.containers.list(managed)),
            "tasks": len(await client.tasks.list()),
            "snapshots": len(await client.snapshots.list(managed)),
            "leases": len(await client.leases.list(managed)),
        }
    finally:
        await client.close()
    counts.update(await asyncio.to_thread(host_leftovers, state))
    return counts


def host_leftovers(state: Path) -> dict[str, int]:
    """Mounts, FIFO directories and workspaces under the state directory; runtime processes."""
    mounts = Path("/proc/self/mounts").read_text().split("\n")

    def entries(directory: Path) -> int:
        return len(list(directory.iterdir())) if directory.exists() else 0

    return {
        "mounts": sum(1 for line in mounts if f" {state}/" in line),
        "fifo directories": entries(state / "fifos"),
        "workspaces": entries(state / "workspaces"),
        "runsc and shim processes": runtime_processes(),
    }


async def soak(url: str, key: str, count: int, concurrency: int) -> collections.Counter[str]:
    """Run ``count`` executions, ``concurrency`` at a time; every tenth is hostile."""
    normal, hostile = itertools.cycle(NORMAL), itertools.cycle(HOSTILE)
    plan = [next(hostile) if i % 10 == 9 else next(normal) for i in range(count)]
    statuses: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(concurrency)
    done = 0
    started = time.monotonic()

    async def one(session: aiohttp.ClientSession, language: str, code: str, timeout: int | None) -> None:
        nonlocal done
        body: dict[str, Any] = {"code": code, "language": language}
        if timeout is not None:
            body["timeout"] = timeout
        async with gate:
            async with session.post(f"{url}/api/v1/execute", data=json.dumps(body)) as response:
                result = await response.json()
            statuses[result.get("status", f"http {response.status}")] += 1
            done += 1
            if done % 100 == 0:
                rate = done / (time.monotonic() - started)
                print(f"  {done}/{count} done, {rate:.1f} executions/s", flush=True)

    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        await asyncio.gather(*(one(session, *item) for item in plan))
    return statuses


def main() -> int:
    """Run the soak and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8002")
    parser.add_argument("--api-key", default=os.environ.get("SANDBOXD_API_KEY"))
    parser.add_argument("--config", type=Path, default=Path("/var/lib/sandboxd-dev/config.toml"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--daemon-pid", type=int)
    args = parser.parse_args()
    key_file = Path("/var/lib/sandboxd-dev/api-key")
    key = args.api_key or (key_file.read_text().strip() if key_file.exists() else None)
    if not key:
        raise SystemExit("no API key: pass --api-key or set SANDBOXD_API_KEY")
    pid = args.daemon_pid or daemon_pid()
    before = rss(pid)
    started = time.monotonic()
    statuses = asyncio.run(soak(args.url, key, args.count, args.concurrency))
    elapsed = time.monotonic() - started
    time.sleep(2)  # teardowns of the last executions finish in the background
    after = rss(pid)
    remaining = asyncio.run(leftovers(args.config))
    print(f"{args.count} executions at concurrency {args.concurrency} in {elapsed:.0f} s "
          f"({args.count / elapsed:.1f}/s)")  # fmt: skip
    print("statuses: " + ", ".join(f"{name} {n}" for name, n in sorted(statuses.items())))
    print(f"daemon RSS: {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB after, "
          f"growth {(after - before) / 2**20:+.1f} MiB (budget {RSS_BUDGET >> 20} MiB)")  # fmt: skip
    for name, n in remaining.items():
        print(f"  {name:<26} {n}")
    clean = not any(remaining.values()) and after - before < RSS_BUDGET
    print("clean" if clean else "NOT CLEAN")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
