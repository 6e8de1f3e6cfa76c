"""The `sandboxd` command line: doctor, run, runtimes and keys, as an operator runs them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from sandboxd.config import Config, load_config
from sandboxd.images.inspect import RUNTIME_LABEL
from tests.daemons import free_port, write_config
from tests.helpers import SHIPPED_RUNTIMES, run_ctr, shipped_runtimes

pytestmark = pytest.mark.integration


async def sandboxd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the command; return its exit status and what it printed (stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandboxd", "--log-level", "WARNING", *args,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.fixture
def config_file(separate_daemon: Callable[[], Config], tmp_path: Path) -> Path:
    """A configuration file for this host's containerd, with state and data directories of its own."""
    path = tmp_path / "config.toml"
    write_config(separate_daemon(), free_port(), path, concurrency=1)
    return path


async def test_doctor_passes_with_a_key(config_file: Path) -> None:
    """With a key configured, every check passes and the exit status is 0."""
    status, output = await sandboxd("--config", str(config_file), "doctor", env={"SANDBOXD_API_KEYS": "k"})
    assert status == 0, output
    lines = output.splitlines()
    assert lines[-1] == "all checks passed"
    names = [line.split(":")[0].split(maxsplit=1)[1] for line in lines[:-1]]
    assert names[:6] == ["api keys", "runsc", "cgroups", "disk (data)", "disk (state)", "runtimes"]
    assert "containerd" in names
    assert {"image python", "image go", "image javascript", "image ruby"} <= set(names)
    disk = next(line for line in lines if line.startswith("ok    image disk: "))
    pattern = r"take [\d.]+ GiB \([\d.]+ GiB stored, [\d.]+ GiB unpacked\); [\d.]+ GiB free at /"
    assert re.search(pattern, disk), disk


async def test_doctor_fails_with_hints(config_file: Path) -> None:
    """No key and an unreachable containerd: each failure has a fix hint, and the exit status is 1."""
    env = {"SANDBOXD_CONTAINERD_ADDRESS": str(config_file.parent / "no-such.sock"), "SANDBOXD_API_KEYS": ""}
    status, output = await sandboxd("--config", str(config_file), "doctor", env=env)
    assert status == 1
    assert "FAIL  api keys: none configured\n        fix: sandboxd --config FILE keys add NAME" in output
    assert "FAIL  containerd:" in output
    assert "fix: start containerd" in output
    assert output.splitlines()[-1] == "2 check(s) failed"


async def test_run_a_file(config_file: Path, tmp_path: Path) -> None:
    """`sandboxd run FILE --language L` runs it through the engine and prints the result."""
    source = tmp_path / "hello.rb"
    source.write_text("puts gets.upcase")
    stdin = tmp_path / "input"
    stdin.write_text("from a file\n")
    status, output = await sandboxd(
        "--config", str(config_file), "run", str(source), "--language", "ruby", "--stdin", str(stdin)
    )
    assert status == 0, output
    result = json.loads(output)
    assert (result["stdout"], result["status"], result["language"]) == ("FROM A FILE\n", "completed", "ruby")


async def test_run_reports_bad_input(config_file: Path, tmp_path: Path) -> None:
    """An unknown language is reported plainly, with exit status 2."""
    source = tmp_path / "x.cob"
    source.write_text("DISPLAY 'HI'.")
    status, output = await sandboxd("--config", str(config_file), "run", str(source), "--language", "cobol")
    assert (status, output.strip()) == (2, "sandboxd: Unsupported language: cobol")


async def test_run_takes_a_version(config_file: Path, tmp_path: Path) -> None:
    """`sandboxd run --version` runs that version of the language; one there is not is bad input."""
    source = tmp_path / "version.py"
    source.write_text("import sys\nprint(sys.version_info[:2])")
    command = ("--config", str(config_file), "run", str(source), "--language", "python", "--version")
    status, output = await sandboxd(*command, "3.11")
    assert status == 0, output
    assert json.loads(output)["stdout"] == "(3, 11)\n"
    status, output = await sandboxd(*command, "3.9")
    assert status == 2
    assert output.startswith("sandboxd: Unsupported version: python 3.9 (available: "), output


async def test_runtimes_table(config_file: Path) -> None:
    """`sandboxd runtimes` lists every runtime with its availability, language, version and version line."""
    status, output = await sandboxd("--config", str(config_file), "runtimes")
    assert status == 0, output
    rows = {line.split()[0]: line.split()[1:] for line in output.splitlines()[1:]}
    assert {name: row[0] for name, row in rows.items()} == {r.name: "yes" for r in shipped_runtimes()}
    available, language, version, aliases, *line = rows["python3.11"]
    assert (available, language, aliases) == ("yes", "python", "-")
    assert version.startswith("3.11.")
    assert " ".join(line) == f"Python {version}"
    assert (rows["python"][1], rows["python"][3]) == ("python", "py,python3")


async def test_keys_add_stores_only_the_hash(config_file: Path) -> None:
    """`keys add` prints the key once, stores its SHA-256 only, and refuses a name used twice."""
    status, output = await sandboxd("--config", str(config_file), "keys", "add", "ci", "--rate-limit", "120")
    assert status == 0, output
    key = next(line.strip() for line in output.splitlines() if line.strip().startswith("sbx_"))
    stored = config_file.read_text()
    assert key not in stored
    assert hashlib.sha256(key.encode()).hexdigest() in stored
    assert "rate_limit = 120" in stored
    status, output = await sandboxd("--config", str(config_file), "keys", "add", "ci")
    assert status == 1
    assert "a key named 'ci' exists already" in output


async def test_images_list(config_file: Path) -> None:
    """`sandboxd images list` shows each runtime's image, availability, disk use, version; then the total."""
    status, output = await sandboxd("--config", str(config_file), "images", "list")
    assert status == 0, output
    lines = output.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("RUNTIME ")))
    rows = {line.split()[0]: line.split()[1:7] for line in lines[header + 1 : -1]}
    assert set(rows) == {r.name for r in shipped_runtimes()}
    available, image, stored, _, unpacked, _ = rows["python"]
    assert (available, image) == ("yes", "sandboxd.local/runtimes/python:trixie")
    # Compressed, the python image's blobs take less than its unpacked layers.
    assert 0 < int(stored) < int(unpacked), output
    total = re.fullmatch(
        r"images take ([\d.]+) GiB: ([\d.]+) GiB of blobs .*, ([\d.]+) GiB unpacked .*", lines[-1]
    )
    assert total is not None, output
    assert float(total[1]) == pytest.approx(float(total[2]) + float(total[3]), abs=0.02)


async def test_images_build_skips_current_images(config_file: Path) -> None:
    """`sandboxd images build python` finds the image current and says so."""
    status, output = await sandboxd("--config", str(config_file), "images", "build", "python")
    assert status == 0, output
    assert "python  current: sandboxd.local/runtimes/python:trixie, Python 3." in output


async def test_a_failed_build_says_so_and_names_its_log(
    separate_daemon: Callable[[], Config], tmp_path: Path
) -> None:
    """A runtime whose packages do not exist fails on its own line, and the output names its full log."""
    config = separate_daemon()
    runtimes = tmp_path / "runtimes"
    runtimes.mkdir()
    python = (SHIPPED_RUNTIMES / "python.toml").read_text()
    broken = python.replace('name = "python"', 'name = "broken-test"').replace(
        'aliases = ["py", "python3"]', "aliases = []"
    )
    broken = broken.replace('"python3-minimal", "libpython3-stdlib"', '"sandboxd-no-such-package"')
    broken = broken.replace("sandboxd.local/runtimes/python:", "sandboxd.local/test/broken:")
    (runtimes / "broken-test.toml").write_text(broken)
    # The dev set-up's data directory: its build area holds the shared base layer already.
    dev_data = load_config(Path(os.environ["SANDBOXD_TEST_CONFIG"]), os.environ).paths.data
    path = tmp_path / "config.toml"
    write_config(attrs.evolve(config, paths=attrs.evolve(config.paths, runtimes=runtimes, data=dev_data)),
                 free_port(), path, concurrency=1)  # fmt: skip
    status, output = await sandboxd("--config", str(path), "images", "build")
    log = dev_data / "build" / "logs" / "broken-test.log"
    assert status == 1, output
    assert "broken-test  step 1 of 3: installing sandboxd-no-such-package from Debian trixie" in output
    assert "broken-test  failed: [broken-test] mmdebstrap exited with status" in output
    assert f"sandboxd: building broken-test failed; its full log: {log}" in output
    assert "images: 0 of 1 ready" in output
    assert "sandboxd-no-such-package" in log.read_text()


async def test_images_prune_deletes_only_images_no_runtime_names(config_file: Path) -> None:
    """An image built for a runtime no file names goes; a current image and one not built by sandboxd stay."""
    config = load_config(config_file, os.environ)
    python = shipped_runtimes().get("python")
    assert python is not None
    stale, kept = (f"sandboxd.local/test/{kind}-{uuid.uuid4().hex[:12]}" for kind in ("stale", "pulled"))
    for name, label in ((stale, "python-gone"), (kept, "")):
        await run_ctr(config, "images", "tag", python.image, name)
        # An empty value removes the label: `kept` is an image sandboxd's builder did not make.
        await run_ctr(config, "images", "label", name, f"{RUNTIME_LABEL}={label}")
    try:
        status, output = await sandboxd("--config", str(config_file), "images", "prune", "--dry-run")
        assert status == 0, output
        assert f"would delete {stale} (built for runtime python-gone)" in output
        assert await run_ctr(config, "images", "ls", "-q", f"name=={stale}")
        status, output = await sandboxd("--config", str(config_file), "images", "prune")
        assert status == 0, output
        assert f"deleted {stale} (built for runtime python-gone)" in output
        assert kept not in output
        assert python.image not in output
        remaining = (await run_ctr(config, "images", "ls", "-q")).split()
        assert stale not in remaining
        assert {kept, python.image} <= set(remaining)
    finally:
        await run_ctr(config, "images", "rm", kept)
