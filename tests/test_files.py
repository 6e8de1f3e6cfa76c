"""Files and arguments in, files out: ``files``, ``args`` and ``output_files`` end to end."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from sandboxd.engine.engine import Engine
from sandboxd.models import MAX_OUTPUT_FILES
from tests.helpers import Client, assert_nothing_left, execute, run, submit, wait_for

pytestmark = pytest.mark.integration

C_ARGS = "#include <stdio.h>\nint main(int c, char **v) { for (int i = 1; i < c; i++) puts(v[i]); }"
ERLANG_ARGS = (
    "-module(main).\n-export([main/0]).\n"
    'main() -> [io:format("~s~n", [A]) || A <- init:get_plain_arguments()].'
)


def _png(width: int, height: int) -> str:
    """Python that writes a valid grey PNG of that size to out/plot.png (what a plotting library does)."""
    return f"""
import os, struct, zlib
def chunk(kind, data):
    body = kind + data
    return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))
rows = b''.join(b'\\x00' + bytes([x % 256 for x in range({width})]) for _ in range({height}))
png = b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', {width}, {height}, 8, 0, 0, 0, 0))
png += chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b'')
os.makedirs('out', exist_ok=True)
open('out/plot.png', 'wb').write(png)
print('drawn')
"""


async def test_files_are_in_the_workspace(http: Client, headers: dict[str, str]) -> None:
    """Text and base64 files, in subdirectories, are there before the program starts."""
    code = "print(open('data/input.txt').read(), open('lib/deep/blob.bin', 'rb').read().hex())"
    blob = base64.b64encode(b"\0\xff\x10").decode()
    files = [
        {"name": "data/input.txt", "content": "héllo"},
        {"name": "lib/deep/blob.bin", "content": blob, "encoding": "base64"},
    ]
    result = await run(http, headers, code, files=files)
    assert result["stdout"] == "héllo 00ff10\n", result


async def test_files_can_be_imported(http: Client, headers: dict[str, str]) -> None:
    """A program may import a module that came as a file beside it."""
    files = [{"name": "helper.py", "content": "def double(x):\n    return 2 * x\n"}]
    result = await run(http, headers, "from helper import double\nprint(double(21))", files=files)
    assert result["stdout"] == "42\n", result


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import sys\nprint(*sys.argv[1:], sep='\\n')"),
        ("javascript", "process.argv.slice(2).forEach(a => console.log(a))"),
        ("c", C_ARGS),
        ("erlang", ERLANG_ARGS),
    ],
)
async def test_args_reach_the_program(
    http: Client, headers: dict[str, str], language: str, code: str
) -> None:
    """Arguments arrive as the program's own, verbatim: no shell, no interpreter options."""
    args = ["one", "two words", "--three", "$HOME;*"]
    result = await run(http, headers, code, language, args=args)
    assert result["stdout"].splitlines() == args, result


async def test_output_files_come_back(http: Client, headers: dict[str, str]) -> None:
    """A plot and a text file the program wrote come back, base64, by name and by glob."""
    result = await run(http, headers, _png(64, 48), output_files=["out/*.png", "missing.txt"])
    assert result["status"] == "completed", result
    [plot] = result["output_files"]
    data = base64.b64decode(plot["content"])
    assert plot["name"] == "out/plot.png"
    assert plot["size"] == len(data)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", data[16:24]) == (64, 48)
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]  # the IHDR chunk is intact


async def test_output_files_is_null_unless_asked(http: Client, headers: dict[str, str]) -> None:
    """Without output_files the result has output_files: null; asked and nothing matched, an empty list."""
    assert (await run(http, headers, "print(1)"))["output_files"] is None
    assert (await run(http, headers, "print(1)", output_files=["*.csv"]))["output_files"] == []


async def test_links_out_of_the_workspace_are_not_followed(http: Client, headers: dict[str, str]) -> None:
    """A link the program made, to a file or a directory, is not followed: its target never comes back."""
    code = (
        "import os\nos.symlink('/etc/passwd', 'passwd.txt')\nos.symlink('/etc', 'etc')\n"
        "open('real.txt', 'w').write('mine')"
    )
    result = await run(http, headers, code, output_files=["*.txt", "etc/passwd", "etc/host*"])
    assert [f["name"] for f in result["output_files"]] == ["real.txt"], result
    for name in ("passwd.txt", "etc/passwd", "etc/hostname"):
        assert f"sandboxd: output file {name} not returned: not a regular file" in result["stderr"]
    assert "root:" not in str(result)


async def test_output_files_are_bounded(http: Client, headers: dict[str, str]) -> None:
    """At most 8 files come back, each at most 1 MiB; what is left out is named in stderr."""
    code = (
        "for i in range(10):\n    open(f'f{i}.txt', 'w').write(str(i))\n"
        "open('big.bin', 'wb').write(b'x' * ((1 << 20) + 1))"
    )
    result = await run(http, headers, code, output_files=["*.txt", "big.bin"])
    names = [f["name"] for f in result["output_files"]]
    assert names == [f"f{i}.txt" for i in range(MAX_OUTPUT_FILES)], result
    assert "sandboxd: output file big.bin not returned: larger than an output file may be" in result["stderr"]
    assert "sandboxd: output file f9.txt not returned: more files matched" in result["stderr"]


async def test_no_output_files_from_a_killed_program(http: Client, headers: dict[str, str]) -> None:
    """A program that timed out has no files read back (its sandbox is gone): an empty list."""
    code = "open('a.txt', 'w').write('x')\nwhile True: pass"
    result = await run(http, headers, code, output_files=["a.txt"], timeout=1)
    assert (result["status"], result["output_files"]) == ("timeout", [])


async def test_asynchronous_results_keep_their_files(http: Client, headers: dict[str, str]) -> None:
    """Files, args and output files work asynchronously too, and the stored result has the files."""
    code = "import sys\nopen('out.txt', 'w').write(open('in.txt').read() + sys.argv[1])"
    execution_id = await submit(
        http, headers, code=code, language="python", files=[{"name": "in.txt", "content": "a"}],
        args=["b"], output_files=["out.txt"],
    )  # fmt: skip
    result = await wait_for(http, headers, execution_id)
    expected = {"name": "out.txt", "size": 2, "content": base64.b64encode(b"ab").decode()}
    assert result["output_files"] == [expected]


async def test_nothing_is_left_after_files(
    http: Client, headers: dict[str, str], engine: Engine, containerd: object, config: object
) -> None:
    """Executions with files in and out leave no sandbox, mount or FIFO behind."""
    files = [{"name": "d/e/f.txt", "content": "x"}]
    await run(http, headers, "open('g.txt', 'w').write('y')", files=files, output_files=["*.txt"])
    await assert_nothing_left(engine, containerd, config)  # type: ignore[arg-type]


def _files(*names: str, **fields: str) -> dict[str, object]:
    return {"files": [{"name": name, "content": "", **fields} for name in names]}


NAME_CHARACTERS = "may use only A-Z a-z 0-9 _ . + @ = , - and / between names"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (_files("../x"), "files[0].name: must not contain empty, . or .. components"),
        (_files("/etc/x"), "files[0].name: must be relative to /workspace"),
        (_files("a b"), f"files[0].name: {NAME_CHARACTERS}"),
        (_files("x", content="!", encoding="base64"), "files[0].content: is not valid base64"),
        (_files("x", encoding="hex"), "files[0].encoding: must be one of: utf8, base64"),
        (_files("x", "x"), "files: names x twice"),
        (_files(*(f"f{i}" for i in range(33))), "files: must be at most 32 files"),
        (_files("main.py"), "files: main.py is the program's own source file"),
        (_files("x", content="a" * ((4 << 20) + 1)), "files: must be at most 4194304 bytes in all"),
        (_files("x", mode="0777"), "files[0]: unknown field: mode"),
        ({"args": "a b"}, "args: expected a list"),
        ({"args": ["a"] * 65}, "args: must be at most 64 arguments"),
        ({"args": ["a\u0000"]}, "args: must not contain NUL"),
        ({"output_files": ["/etc/passwd"]}, "output_files: '/etc/passwd' must be relative to /workspace"),
        ({"output_files": ["../*"]}, "output_files: '../*' must not contain empty, . or .. components"),
        ({"output_files": [f"f{i}" for i in range(9)]}, "output_files: must name at most 8 files"),
    ],
)
async def test_invalid_files_and_args_are_400(
    http: Client, headers: dict[str, str], body: dict[str, object], detail: str
) -> None:
    """Each malformed files, args or output_files field is refused, naming the field."""
    status, answer = await execute(http, headers, code="print(1)", language="python", **body)
    assert status == 400, answer
    assert answer["detail"] == detail


async def test_sqlite_takes_no_arguments(http: Client, headers: dict[str, str]) -> None:
    """A runtime whose run command would read arguments as code refuses them."""
    status, answer = await execute(http, headers, code="SELECT 1;", language="sqlite", args=["x"])
    assert status == 400
    assert answer["detail"] == "args: sqlite programs take no command-line arguments"
