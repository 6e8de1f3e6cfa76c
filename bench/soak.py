"""Soak: many executions, a tenth of them hostile, then count everything they could have leaked.

Runs against a sandboxd already serving. Prints the status of every execution,
the daemon's RSS before and after, and how many of that daemon's containers, tasks,
snapshots, leases, mounts, FIFO directories and workspaces remain, and runsc or shim
processes serving no task. Exits 1 when anything remains or RSS grew by 20 MB or more.

The daemon's pool keeps sandboxes booted on purpose: as many pool sandboxes of each
runtime as its /metrics report idle (sandboxd_pool_idle_sandboxes) are not counted;
one more is, like any other. Boots and removals still under way when the load ends
are waited for (up to SETTLE_SECONDS) before anything counts as left.

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
import attrs
from prometheus_client.parser import text_string_to_metric_families

from sandboxd.config import Config, load_config
from sandboxd.containerd import ContainerdClient
from sandboxd.engine.engine import LANGUAGE_LABEL, POOL_LABEL
from sandboxd.engine.host import client_for
from sandboxd.engine.roots import ROOT_LABEL
from sandboxd.engine.sandbox import HOST_LABEL, host_id_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.leftovers import Leftovers, find_leftovers

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
    ("javascript", "const kept = [];\nfor (;;) kept.push(Buffer.alloc(32 << 20, 1));", 10),
]
RSS_BUDGET: Final = 20 << 20
# Sandboxes being booted or removed when the load ends are gone or idle well within this.
SETTLE_SECONDS: Final = 30.0
IDLE_GAUGE: Final = "sandboxd_pool_idle_sandboxes"


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


async def idle_in_pool(url: str) -> collections.Counter[str]:
    """How many idle sandboxes the daemon's pool holds, by language (none when its pool is off)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    idle: collections.Counter[str] = collections.Counter()
    for family in text_string_to_metric_families(text):
        if family.name == IDLE_GAUGE:
            for sample in family.samples:
                idle[sample.labels["language"]] += int(sample.value)
    return idle


async def pool_accounted(client: ContainerdClient, host_id: str, idle: collections.Counter[str]) -> set[str]:
    """The pool sandboxes that ``idle`` accounts for (per language, as many as the pool holds), and roots.

    A sandbox the pool booted keeps its pool label when an execution takes it, so the
    label alone does not say idle: only the count the pool reports does. Those with a
    task (an idle one's agent runs) are taken first.
    """
    mine = f'labels."{HOST_LABEL}"=={host_id},labels."{POOL_LABEL}"==true'
    pooled = await client.containers.list([mine])
    # The images' shared roots are the daemon's own while it runs.
    roots = f'labels."{HOST_LABEL}"=={host_id},labels."{ROOT_LABEL}"==true'
    accounted = {lease.id for lease in await client.leases.list([roots])}
    with_task = {task.container_id for task in await client.tasks.list()}
    for language, count in idle.items():
        candidates = [c.id for c in pooled if c.labels.get(LANGUAGE_LABEL) == language]
        candidates.sort(key=lambda sandbox_id: (sandbox_id not in with_task, sandbox_id))
        accounted.update(candidates[:count])
    return accounted


async def leftovers(url: str, config: Config) -> tuple[Leftovers, collections.Counter[str]]:
    """What the daemon left, its pool's idle sandboxes aside; and how many those were, by language.

    Looked at again every second until nothing is left while the pool's count holds still,
    or until SETTLE_SECONDS have passed: what is found then is left for good.
    """
    client = client_for(config)
    deadline = time.monotonic() + SETTLE_SECONDS
    try:
        while True:
            idle = await idle_in_pool(url)
            accounted = await pool_accounted(client, host_id_for(config.paths.state), idle)
            found = await find_leftovers(client, [config.paths.state], keep=accounted.copy)
            steady = await idle_in_pool(url) == idle
            if (steady and found.is_empty()) or time.monotonic() > deadline:
                return found, idle
            await asyncio.sleep(1.0)
    finally:
        await client.close()


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
    remaining, idle = asyncio.run(leftovers(args.url, load_config(args.config, os.environ)))
    after = rss(pid)
    print(f"{args.count} executions at concurrency {args.concurrency} in {elapsed:.0f} s "
          f"({args.count / elapsed:.1f}/s)")  # fmt: skip
    print("statuses: " + ", ".join(f"{name} {n}" for name, n in sorted(statuses.items())))
    print(f"daemon RSS: {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB after, "
          f"growth {(after - before) / 2**20:+.1f} MiB (budget {RSS_BUDGET >> 20} MiB)")  # fmt: skip
    pooled = ", ".join(f"{language} {n}" for language, n in sorted(idle.items()) if n) or "none"
    print(f"idle in the pool, not counted: {sum(idle.values())} ({pooled})")
    for name, found in attrs.asdict(remaining).items():
        print(f"  {name.replace('_', ' '):<26} {len(found)}")
        for item in found[:5]:
            print(f"    {item}")
    clean = remaining.is_empty() and after - before < RSS_BUDGET
    print("clean" if clean else "NOT CLEAN")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
