"""Benchmark: sandboxd's latency and throughput, with the pool on and off, against baselines in the same run.

It starts daemons of its own on loopback (state under /run/sandboxd-bench-*,
stopped at the end) against the dev set-up's containerd and runtimes: ``pool`` and
``no-pool`` with the shipped defaults (only the rate limit raised, which the
benchmark would otherwise hit, and, for ``no-pool``, the pool off), and ``tuned``
with more slots and a larger pool. It measures:

- sync latency p50/p95 of a hello program per language, pool on and off, and the
  daemon's own share (end-to-end latency minus the program's reported run time);
- what the syntax check of Python and JavaScript adds to a hello: a fourth daemon
  (``unchecked``, the shipped defaults) serves those runtimes as they ran before
  the check (``python3 main.py``, ``node main.js``), requests alternate between
  the two, and the table gives both p50s and the median of the paired differences;
- a batch of 10 Python hellos;
- Python throughput at concurrency 1, 2, 4 and 8, and a loop of `runsc do` at 4;
- at concurrency 4, the CPU each execution costs by process class (bench/cpu.py);
- baselines: the bare host process (where the host has the interpreter), `runsc do`
  of the same program on the same image's root filesystem, and `runsc exec` into a
  sandbox that is already running.

It prints a table with ratios and writes everything as JSON.

    sudo .venv/bin/python bench/latency.py --runs 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
from cpu import UNATTRIBUTED, CpuBreakdown, CpuMeter, pids_named

from sandboxd.api.auth import generate_key
from sandboxd.config import Config, load_config
from sandboxd.containerd import NotFoundError
from sandboxd.engine.agent import shipped_checks
from sandboxd.engine.cleanups import Cleanups
from sandboxd.engine.engine import EngineSettings, sandbox_limits
from sandboxd.engine.host import client_for, prepare_host
from sandboxd.engine.oci import NOBODY
from sandboxd.engine.reconcile import reconcile
from sandboxd.engine.roots import SharedRoots
from sandboxd.engine.sandbox import HOST_LABEL, MANAGED_LABEL, Sandbox
from sandboxd.images.inspect import inspect_image
from sandboxd.runtimes import IMAGE_CHECKS_DIR, SANDBOX_CHECKS_DIR, Program, Runtime, load_runtimes

HELLO: Final = {
    "python": "print('hello')",
    "javascript": "console.log('hello')",
    "go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello") }',
    "ruby": "puts 'hello'",
}
CONCURRENCY_LEVELS: Final = (1, 2, 4, 8)
BATCH_SIZE: Final = 10
# The concurrency the CPU breakdown and the `runsc do` loop are measured at.
MEASURED: Final = 4
# What each daemon sets beyond the defaults (table -> key -> TOML value).
POOL_OFF: Final = {"pool": {"enabled": "false"}}
TUNED: Final = {"limits": {"concurrency": "8", "queue": "256"}, "pool": {"max": "10"}}
# The exact classes of the CPU table (cgroup v1's cpuacct): every sandbox's cgroup is under
# /sandboxd; containerd is moved into a cgroup of its own, where its shims and their runsc
# calls start too.
SANDBOX_CGROUPS: Final = "gVisor sandboxes (their cgroups)"
CONTAINERD_AND_CALLS: Final = "containerd, its shims, their runsc calls"
# The run commands of the runtimes with an in-process syntax check, as they were before it.
UNCHECKED_RUN: Final = {"python": ["python3", "main.py"], "javascript": ["node", "main.js"]}


def percentile(samples: list[float], fraction: float) -> float:
    """The sample at ``fraction`` of the sorted list (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p95 and mean of ``samples`` (seconds)."""
    return {
        "p50": percentile(samples, 0.5),
        "p95": percentile(samples, 0.95),
        "mean": statistics.fmean(samples),
    }


def hello(runtime: Runtime) -> str:
    """The runtime's hello program: the benchmark's own, else its conformance snippet."""
    return HELLO.get(runtime.name) or runtime.conformance.hello


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BenchDaemon:
    """`sandboxd serve` of the benchmark's own, with or without the pool."""

    def __init__(
        self, base: Config, name: str, *, work: Path, settings: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.name = name
        self.key = generate_key()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = Path(f"/run/sandboxd-bench-{name}")
        self.data = work / name
        self.config_path = work / f"{name}.toml"
        self.log = work / f"{name}.log"
        tables: dict[str, dict[str, str]] = {
            "server": {"port": str(self.port)},
            "health": {"address": '"127.0.0.1:0"'},
            "containerd": {"address": f'"{base.containerd.address}"'},
            "runsc": {"binary": f'"{base.runsc.binary}"', "platform": f'"{base.runsc.platform}"'},
            "paths": {
                "runtimes": f'"{base.paths.runtimes}"', "state": f'"{self.state}"', "data": f'"{self.data}"'
            },
            # A policy, not a cost: the benchmark sends more a minute than the default lets one key.
            "limits": {"rate_limit": "1000000"},
        }  # fmt: skip
        for table, values in settings.items():
            tables.setdefault(table, {}).update(values)
        self.config_path.write_text(
            "".join(
                f"[{table}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
                for table, values in tables.items()
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The running daemon's process id."""
        if self.process is None:
            raise RuntimeError(f"daemon {self.name} is not running")
        return self.process.pid

    def start(self) -> None:
        """Start the daemon and wait until it answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sandboxd", "--config", str(self.config_path), "serve"],
                env={**os.environ, "SANDBOXD_API_KEYS": self.key},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"daemon {self.name} exited; see {self.log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.1)
        raise SystemExit(f"daemon {self.name} did not answer within 60 s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM, then wait (it removes its sandboxes, its pool's included)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.state, ignore_errors=True)


class Client:
    """HTTP calls to one daemon."""

    def __init__(self, session: aiohttp.ClientSession, daemon: BenchDaemon) -> None:
        self.session = session
        self.daemon = daemon

    async def post(self, path: str, body: Any) -> Any:
        """POST JSON; fail loudly on anything but 200."""
        headers = {"X-API-Key": self.daemon.key, "Content-Type": "application/json"}
        async with self.session.post(f"{self.daemon.url}{path}", json=body, headers=headers) as response:
            if response.status != 200:
                raise SystemExit(f"{self.daemon.name} {path}: {response.status} {await response.text()}")
            return await response.json()

    async def execute(self, language: str, code: str) -> tuple[float, float]:
        """One sync execution that must print hello; return (end-to-end seconds, the program's time)."""
        started = time.perf_counter()
        result = await self.post("/api/v1/execute", {"code": code, "language": language})
        elapsed = time.perf_counter() - started
        if result["stdout"] != "hello\n":
            raise SystemExit(f"{self.daemon.name} {language}: unexpected result {result}")
        return elapsed, float(result["execution_time"])

    async def batch(self, language: str, code: str, size: int) -> float:
        """One batch of ``size`` executions; return its end-to-end seconds."""
        started = time.perf_counter()
        body = [{"code": code, "language": language} for _ in range(size)]
        result = await self.post("/api/v1/execute/batch", body)
        elapsed = time.perf_counter() - started
        outputs = [item["stdout"] for item in result]
        if outputs != ["hello\n"] * size:
            raise SystemExit(f"{self.daemon.name} batch: unexpected results {result}")
        return elapsed


def write_unchecked_runtimes(source: Path, target: Path) -> None:
    """The runtime files of UNCHECKED_RUN's languages as they were before their syntax check."""
    target.mkdir()
    for name, run in UNCHECKED_RUN.items():
        text = (source / f"{name}.toml").read_text()
        text, runs = re.subn(r"(?m)^run = \[.*\]$", f"run = {json.dumps(run)}", text, count=1)
        reason = 'reason = "the benchmark\'s runtime as it was before its syntax check"'
        text, kinds = re.subn(r'(?m)^kind = "in_process"$', f'kind = "none"\n{reason}', text, count=1)
        if (runs, kinds) != (1, 1):
            raise SystemExit(f"{name}.toml: no run command or in-process syntax check to take out")
        (target / f"{name}.toml").write_text(text)


async def check_cost(
    checked: Client, unchecked: Client, runtime: Runtime, runs: int, interval: float
) -> dict[str, Any]:
    """A hello with and without the syntax check, requests alternating between the two daemons."""
    code = hello(runtime)
    for client in (checked, unchecked):
        for _ in range(3):
            await client.execute(runtime.name, code)
            await asyncio.sleep(max(interval, 0.5))
    samples: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for index in range(runs):
        # Either daemon goes first in turn, so that neither always finds the host busier.
        pair = (checked, unchecked) if index % 2 == 0 else (unchecked, checked)
        for client in pair:
            total, _ = await client.execute(runtime.name, code)
            samples["checked" if client is checked else "unchecked"].append(total)
            await asyncio.sleep(interval)
    added = [a - b for a, b in zip(samples["checked"], samples["unchecked"], strict=True)]
    with_check, without = summary(samples["checked"]), summary(samples["unchecked"])
    return {
        "checked": with_check,
        "unchecked": without,
        "added_p50": with_check["p50"] - without["p50"],
        "added_paired_median": statistics.median(added),
    }


async def latency(client: Client, runtime: Runtime, runs: int, interval: float) -> dict[str, Any]:
    """Sequential sync executions after a warm-up, ``interval`` seconds apart; latency and the daemon's share.

    Spaced out, each request finds the sandboxes the pool booted since the last one:
    this is the latency a caller sees while the host keeps up. The throughput runs
    measure the host saturated.
    """
    code = hello(runtime)
    for _ in range(3):
        await client.execute(runtime.name, code)
        await asyncio.sleep(max(interval, 0.5))
    totals, shares = [], []
    for _ in range(runs):
        total, program = await client.execute(runtime.name, code)
        totals.append(total)
        shares.append(total - program)
        await asyncio.sleep(interval)
    return {**summary(totals), "daemon_share_p50": percentile(shares, 0.5)}


async def throughput(client: Client, concurrency: int, count: int) -> float:
    """Python hellos per second with ``concurrency`` clients sending ``count`` in all."""
    code = HELLO["python"]
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await client.execute("python", code)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def throughputs(client: Client, least: int, report: dict[str, Any]) -> dict[str, float]:
    """Throughput at each concurrency; for the default daemon, the CPU breakdown at ``MEASURED`` too."""
    rates = {}
    for concurrency in CONCURRENCY_LEVELS:
        count = max(least, 4 * concurrency)
        await throughput(client, concurrency, concurrency)  # warm-up: demand for the pool
        if client.daemon.name == "pool" and concurrency == MEASURED:
            containerd = pids_named("containerd")
            meter = CpuMeter(
                {"the daemon": [client.daemon.pid], "benchmark client": [os.getpid()]},
                contained={CONTAINERD_AND_CALLS: containerd},
                groups={SANDBOX_CGROUPS: "sandboxd"},
                within={"containerd itself": containerd},
            )
            with meter.measuring(count):
                rates[str(concurrency)] = await throughput(client, concurrency, count)
            report["cpu"]["pool"] = meter.breakdown
        else:
            rates[str(concurrency)] = await throughput(client, concurrency, count)
    return rates


def time_runs(runs: int, once: Callable[[], None]) -> list[float]:
    """Wall times of ``runs`` calls, after one warm-up call."""
    once()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        once()
        samples.append(time.perf_counter() - started)
    return samples


def hello_program(runtime: Runtime, checks_dir: str = SANDBOX_CHECKS_DIR) -> Program:
    """The file name and commands of the runtime's hello, names filled in as sandboxd fills them."""
    return runtime.program_for(hello(runtime), checks_dir)


def shell_script(runtime: Runtime, checks_dir: str = SANDBOX_CHECKS_DIR) -> str:
    """The runtime's steps as one command line (the benchmark's own fixed programs only)."""
    program = hello_program(runtime, checks_dir)
    run = shlex.join(program.run)
    if program.check_in_run:
        # Its syntax check reports on fd 3, which sandboxd's agent gives it: here, a sink.
        variables = [f"{name}={shlex.quote(value)}" for name, value in program.run_environment.items()]
        run = " ".join([*variables, run, "3>/dev/null"])
    first = program.compile or program.check
    # As in sandboxd, what the compiler prints on stdout is not the program's output.
    return f"{shlex.join(first)} >/dev/null && {run}" if first else run


def write_checks(directory: str) -> str:
    """Shell commands that write sandboxd's syntax checks into ``directory`` (a root without the agent's).

    Shell builtins only (no mkdir: ``directory`` exists), so that a run pays for no process more.
    """
    return " && ".join(
        f"printf %s {shlex.quote(content.decode())} > {directory}/{name}"
        for name, content in shipped_checks().items()
    )


def checked(name: str, argv: list[str], source: bytes | None = None) -> Callable[[], None]:
    """A command that must print hello."""

    def once() -> None:
        done = subprocess.run(argv, input=source, capture_output=True, check=False)
        if done.stdout != b"hello\n":
            raise SystemExit(f"{name}: printed {done.stdout!r} {done.stderr[-500:]!r}")

    return once


def succeeded(argv: list[str]) -> Callable[[], None]:
    """A command that must exit 0."""

    def once() -> None:
        subprocess.run(argv, capture_output=True, check=True)

    return once


def host_baseline(runtime: Runtime, runs: int) -> dict[str, float] | None:
    """The program as a bare host process, where the host has the runtime's interpreter."""
    run = hello_program(runtime).run
    if runtime.compiled or shutil.which(run[0]) is None:
        return None
    if any(IMAGE_CHECKS_DIR in arg for arg in run):
        return None  # it needs a file of its image's own (JavaScript's startup snapshot)
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / hello_program(runtime).source_file).write_text(hello(runtime))
        checks = Path(directory) / ".checks"
        checks.mkdir()
        for name, content in shipped_checks().items():
            (checks / name).write_bytes(content)
        argv = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in runtime.environment.items())]
        argv += ["/bin/sh", "-c", f"cd {directory} && {shell_script(runtime, str(checks))}"]
        return summary(time_runs(runs, checked(runtime.name, argv)))


@contextlib.asynccontextmanager
async def image_rootfs(config: Config, runtime: Runtime) -> AsyncIterator[str]:
    """A read-only view of the runtime image's root filesystem as a host directory, removed afterwards."""
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
            if len(mounts) != 1:
                raise SystemExit(f"{runtime.name}: expected one mount for the image view, got {mounts}")
            mount = mounts[0]
            if mount.type == "bind":
                yield mount.source
            else:
                # Several layers: an overlay view. `runsc do` cannot boot from an overlayfs
                # root, so the merged tree is copied to a plain directory for the run.
                with tempfile.TemporaryDirectory() as target, tempfile.TemporaryDirectory() as copy:
                    options = ",".join(mount.options)
                    mount_argv = ["mount", "-t", mount.type, "-o", options, mount.source, target]
                    await asyncio.to_thread(subprocess.run, mount_argv, check=True)
                    try:
                        copy_argv = ["cp", "-a", f"{target}/.", copy]
                        await asyncio.to_thread(subprocess.run, copy_argv, check=True)
                    finally:
                        await asyncio.to_thread(subprocess.run, ["umount", target], check=False)
                    yield copy
        finally:
            with contextlib.suppress(NotFoundError):
                await client.snapshots.remove(key)
            await client.leases.delete(key)
    finally:
        await client.close()


async def runsc_do_baseline(config: Config, runtime: Runtime, runs: int) -> dict[str, float]:
    """The same program under `runsc do` on the image's root filesystem (compile step included)."""
    async with image_rootfs(config, runtime) as rootfs:
        once = checked(runtime.name, runsc_do_argv(config, runtime, rootfs), hello(runtime).encode())
        return summary(await asyncio.to_thread(time_runs, runs, once))


def runsc_do_argv(config: Config, runtime: Runtime, rootfs: str) -> list[str]:
    """`runsc do` of the hello on ``rootfs``, its syntax check included; the code comes on stdin."""
    env = [f"{k}={v}" for k, v in runtime.environment.items()]
    checks = "/tmp"  # noqa: S108 (in the sandbox runsc do makes, beside the program's file)
    script = f"{write_checks(checks)} && cd /tmp && cat > {hello_program(runtime).source_file}"
    script += f" && {shell_script(runtime, checks)}"
    return [*runsc_do(config, rootfs), "/usr/bin/env", "-i", *env, "/bin/sh", "-c", script]


def runsc_do(config: Config, rootfs: str) -> list[str]:
    """`runsc do` on ``rootfs`` with sandboxd's network and platform, before the command it runs."""
    platform = f"--platform={config.runsc.platform}"
    return [config.runsc.binary, "--network=none", platform, "do", "-quiet", "-root", rootfs]


async def runsc_do_throughput(
    config: Config, runtime: Runtime, concurrency: int, count: int, *, program: bool = True
) -> tuple[float, CpuMeter]:
    """Hellos per second of ``concurrency`` loops of `runsc do`, a fresh sandbox each, no containerd.

    Without ``program`` each sandbox runs /bin/true: the least one gVisor sandbox costs.
    """
    async with image_rootfs(config, runtime) as rootfs:
        if program:
            once = checked(runtime.name, runsc_do_argv(config, runtime, rootfs), hello(runtime).encode())
        else:
            once = succeeded([*runsc_do(config, rootfs), "/bin/true"])
        remaining = count

        def loop() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                once()

        await asyncio.to_thread(once)  # warm-up
        meter = CpuMeter({"benchmark client": [os.getpid()]})
        with meter.measuring(count):
            started = time.perf_counter()
            await asyncio.gather(*(asyncio.to_thread(loop) for _ in range(concurrency)))
            rate = count / (time.perf_counter() - started)
        return rate, meter


async def exec_baselines(config: Config, runtime: Runtime, runs: int) -> dict[str, dict[str, float]]:
    """Into one running sandbox: `runsc exec` (the least an exec through containerd costs), and the agent."""
    state_dir = Path("/run/sandboxd-bench-exec")
    bench_config = attrs.evolve(config, paths=attrs.evolve(config.paths, state=state_dir))
    client = client_for(bench_config)
    host = await asyncio.to_thread(prepare_host, bench_config, client)
    await reconcile(host)  # what an interrupted earlier run of the benchmark left
    state = await inspect_image(client, runtime)
    if state.chain_id is None:
        raise SystemExit(f"{runtime.name}: {state.reason}")
    limits = sandbox_limits(runtime, EngineSettings.from_limits(config.limits))
    sandbox_id = f"bench-exec-{runtime.name}-{os.getpid()}"
    cleanups = Cleanups()
    roots = SharedRoots(client, host.roots, labels={MANAGED_LABEL: "true", HOST_LABEL: host.host_id})
    sandbox = await Sandbox.create(
        host, sandbox_id, image=runtime.image, root=await roots.path_for(state.chain_id), limits=limits,
        workspace_bytes=32 << 20, labels={}, cleanups=cleanups,
    )  # fmt: skip
    try:
        await sandbox.write_files({hello_program(runtime).source_file: hello(runtime).encode()})
        env = [f"--env={k}={v}" for k, v in runtime.environment.items()]
        argv = [config.runsc.binary, "--root", str(host.runsc_root / client.namespace), "exec"]
        argv += ["--user", f"{NOBODY}:{NOBODY}", "--cwd", "/workspace", *env, sandbox_id]
        argv += ["/bin/sh", "-c", shell_script(runtime)]
        runsc_exec = summary(await asyncio.to_thread(time_runs, runs, checked(runtime.name, argv)))

        agent_runs = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            outcome = await sandbox.run(
                ["/bin/sh", "-c", shell_script(runtime)], environment=runtime.environment, stdin=b"",
                timeout=30, output_cap=1 << 20,
            )  # fmt: skip
            if outcome.stdout.data != b"hello\n":
                raise SystemExit(f"{runtime.name}: agent run printed {outcome.stdout.data!r}")
            agent_runs.append(time.perf_counter() - started)
        return {"runsc_exec": runsc_exec, "agent_in_running_sandbox": summary(agent_runs[1:])}
    finally:
        await sandbox.destroy()
        await roots.close()
        await client.close()
        shutil.rmtree(state_dir, ignore_errors=True)


def ms(value: float | None) -> str:
    """Seconds as a short millisecond string."""
    return "-" if value is None else f"{value * 1000:.0f}"


async def measure(args: argparse.Namespace, config: Config, runtimes: list[Runtime]) -> dict[str, Any]:
    """Every measurement of the run."""
    report: dict[str, Any] = {
        "runs": args.runs, "languages": {}, "syntax_check": {}, "batch": {}, "throughput": {}, "cpu": {}
    }  # fmt: skip
    checked_languages = [r for r in runtimes if r.name in UNCHECKED_RUN and not args.per_language]
    with tempfile.TemporaryDirectory(prefix="sandboxd-bench-") as work:
        unchecked_runtimes = Path(work) / "unchecked-runtimes"
        write_unchecked_runtimes(config.paths.runtimes, unchecked_runtimes)
        unchecked = {"paths": {"runtimes": f'"{unchecked_runtimes}"'}}
        daemons = {
            "pool": BenchDaemon(config, "pool", work=Path(work), settings={}),
            "no_pool": BenchDaemon(config, "no-pool", work=Path(work), settings=POOL_OFF),
            "tuned": BenchDaemon(config, "tuned", work=Path(work), settings=TUNED),
        }
        if checked_languages:
            daemons["unchecked"] = BenchDaemon(config, "unchecked", work=Path(work), settings=unchecked)
        try:
            for daemon in daemons.values():
                daemon.start()
            timeout = aiohttp.ClientTimeout(total=300)
            connector = aiohttp.TCPConnector(limit=16)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                clients = {name: Client(session, daemon) for name, daemon in daemons.items()}
                for runtime in runtimes:
                    await measure_language(args, config, runtime, clients, report)
                if args.per_language:
                    return report
                for runtime in checked_languages:
                    cost = await check_cost(
                        clients["pool"], clients["unchecked"], runtime, 2 * args.runs, args.interval
                    )
                    report["syntax_check"][runtime.name] = cost
                    print_check_cost(runtime.name, cost)
                if "unchecked" in daemons:
                    # Done with: its idle sandboxes would be memory the load runs below do not have.
                    daemons["unchecked"].stop()
                    del clients["unchecked"]
                await measure_load(args, config, runtimes[0], clients, report)
        finally:
            for daemon in daemons.values():
                daemon.stop()
    return report


async def measure_language(
    args: argparse.Namespace,
    config: Config,
    runtime: Runtime,
    clients: Mapping[str, Client],
    report: dict[str, Any],
) -> None:
    """One language's latency row (the quick one with ``--per-language``)."""
    row: dict[str, Any] = {}
    if args.per_language:
        row["pool"] = await latency(clients["pool"], runtime, args.runs, args.interval)
        row["runsc_do"] = await runsc_do_baseline(config, runtime, args.runs)
        report["languages"][runtime.name] = row
        pool, do = row["pool"], row["runsc_do"]
        print(
            f"{runtime.name:<11}{ms(pool['p50']):>8}{ms(pool['p95']):>7}"
            f"{ms(pool['daemon_share_p50']):>7}{ms(do['p50']):>10}"
            f"{pool['p50'] / do['p50']:>9.2f}x",
            flush=True,
        )
        return
    for name in ("pool", "no_pool"):
        row[name] = await latency(clients[name], runtime, args.runs, args.interval)
    row["pool_back_to_back"] = await latency(clients["pool"], runtime, args.runs, 0.0)
    row["host_process"] = await asyncio.to_thread(host_baseline, runtime, args.runs)
    row["runsc_do"] = await runsc_do_baseline(config, runtime, args.runs)
    row.update(await exec_baselines(config, runtime, args.runs))
    report["languages"][runtime.name] = row
    print_language(runtime.name, row)


async def measure_load(
    args: argparse.Namespace,
    config: Config,
    python: Runtime,
    clients: Mapping[str, Client],
    report: dict[str, Any],
) -> None:
    """Batches and throughput of each daemon, then the `runsc do` loops at ``MEASURED``."""
    for name, client in clients.items():
        samples = []
        for _ in range(5):
            await asyncio.sleep(args.interval * BATCH_SIZE)  # time to refill between batches
            samples.append(await client.batch("python", HELLO["python"], BATCH_SIZE))
        report["batch"][name] = summary(samples)
    for name, client in clients.items():
        report["throughput"][name] = await throughputs(client, args.throughput_count, report)
    count = max(args.throughput_count, 4 * MEASURED)
    rate, meter = await runsc_do_throughput(config, python, MEASURED, count)
    report["throughput"]["runsc_do"] = {str(MEASURED): rate}
    report["cpu"]["runsc_do"] = meter.breakdown
    rate, meter = await runsc_do_throughput(config, python, MEASURED, count, program=False)
    report["throughput"]["runsc_do_true"] = {str(MEASURED): rate}
    report["cpu"]["runsc_do_true"] = meter.breakdown


def print_language(name: str, row: dict[str, Any]) -> None:
    """One line of the latency table."""
    pool, no_pool = row["pool"], row["no_pool"]
    host = row["host_process"]
    print(
        f"{name:<11}{ms(pool['p50']):>8}{ms(pool['p95']):>7}{ms(pool['daemon_share_p50']):>7}"
        f"{ms(row['pool_back_to_back']['p50']):>8}"
        f"{ms(no_pool['p50']):>9}{ms(no_pool['p95']):>7}"
        f"{ms(host['p50'] if host else None):>7}{ms(row['runsc_do']['p50']):>10}"
        f"{ms(row['runsc_exec']['p50']):>8}{ms(row['agent_in_running_sandbox']['p50']):>8}"
        f"{no_pool['p50'] / pool['p50']:>9.2f}x{pool['p50'] / row['runsc_do']['p50']:>8.2f}x"
        f"{pool['p50'] / row['runsc_exec']['p50']:>8.2f}x",
        flush=True,
    )


def print_check_cost(name: str, cost: dict[str, Any]) -> None:
    """One line of the syntax check's cost."""
    print(
        f"syntax check, {name} hello: p50 {ms(cost['checked']['p50'])} ms checked,"
        f" {ms(cost['unchecked']['p50'])} ms as before the check; added: p50"
        f" {cost['added_p50'] * 1000:+.1f} ms, median of pairs {cost['added_paired_median'] * 1000:+.1f} ms",
        flush=True,
    )


def print_cpu(breakdowns: Mapping[str, CpuBreakdown]) -> None:
    """The CPU tables: milliseconds per execution by class, for sandboxd and the `runsc do` loops."""
    print(f"\nCPU per python hello at concurrency {MEASURED}, ms (cgroups, /proc, process accounting):")
    per_run = {name: breakdown.per_execution_ms() for name, breakdown in breakdowns.items()}
    print_rows(per_run, total={name: b.total_ms for name, b in breakdowns.items()})
    split = {name: b.split_per_execution_ms() for name, b in breakdowns.items() if b.split}
    if split:
        print("the exact classes above split by process (process accounting, 10 ms a process rounded down):")
        print_rows(split)


def print_rows(per_run: Mapping[str, Mapping[str, float]], total: Mapping[str, float] | None = None) -> None:
    """Rows of classes, a column per run; what no class has comes last."""
    classes = sorted({c for ms_by_class in per_run.values() for c in ms_by_class} - {UNATTRIBUTED})
    if any(UNATTRIBUTED in row for row in per_run.values()):
        classes.append(UNATTRIBUTED)
    print(f"  {'class':<42}" + "".join(f"{name:>15}" for name in per_run))
    for name in classes:
        print(f"  {name:<42}" + "".join(f"{row.get(name, 0.0):>15.1f}" for row in per_run.values()))
    if total is not None:
        print(f"  {'all':<42}" + "".join(f"{total.get(name, 0.0):>15.1f}" for name in per_run))


def main() -> int:
    """Run the benchmark, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("/var/lib/sandboxd-dev/config.toml"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--throughput-count", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between latency samples")
    parser.add_argument(
        "--per-language", action="store_true",
        help="only latency with the pool and `runsc do` per language (a quick table of every runtime)",
    )  # fmt: skip
    parser.add_argument("--languages", nargs="*", default=list(HELLO))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "latency.json")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the daemons this run started are stopped too.
    signal.signal(signal.SIGTERM, lambda _signo, _frame: sys.exit(143))
    config = load_config(args.config, os.environ)
    registry = load_runtimes(config.paths.runtimes)
    runtimes = []
    for language in args.languages:
        runtime = registry.get(language)
        if runtime is None:
            raise SystemExit(f"unknown language {language}")
        runtimes.append(runtime)
    if runtimes[0].name != "python" and not args.per_language:
        raise SystemExit("the batch and throughput runs use python: list it first")
    print("latency in ms (p50 unless p95); ratios of p50")
    if args.per_language:
        print(f"{'language':<11}{'pool':>8}{'p95':>7}{'share':>7}{'runsc do':>10}{'/do':>10}")
    else:
        print(
            f"{'language':<11}{'pool':>8}{'p95':>7}{'share':>7}{'b2b':>8}{'no pool':>9}{'p95':>7}{'host':>7}"
            f"{'runsc do':>10}{'exec':>8}{'agent':>8}{'off/on':>10}{'/do':>9}{'/exec':>9}"
        )
    report = asyncio.run(measure(args, config, runtimes))
    if not args.per_language:
        print(f"\nbatch of {BATCH_SIZE} python hellos: " + ", ".join(
            f"{name} p50 {ms(s['p50'])} ms" for name, s in report["batch"].items()
        ))  # fmt: skip
        print("python executions per second at concurrency " + "/".join(map(str, CONCURRENCY_LEVELS)) + ":")
        for name, rates in report["throughput"].items():
            print(f"  {name:<9} " + "  ".join(f"{c}: {rate:.1f}" for c, rate in rates.items()))
        do_rate = report["throughput"]["runsc_do"][str(MEASURED)]
        for name in ("pool", "tuned"):
            ratio = report["throughput"][name][str(MEASURED)] / do_rate
            print(f"  {name} / runsc do at concurrency {MEASURED}: {ratio:.2f}x")
        floor = report["throughput"]["runsc_do_true"][str(MEASURED)]
        print(
            f"  runsc do /bin/true (a sandbox that runs nothing) at {MEASURED}: {floor:.1f}/s,"
            f" {floor / do_rate:.2f}x"
        )
        print_cpu(report["cpu"])
        report["cpu"] = {name: attrs.asdict(breakdown) for name, breakdown in report["cpu"].items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
