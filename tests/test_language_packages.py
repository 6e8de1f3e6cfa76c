"""Language packages in images: the pip and npm command lines a build runs, and where their files go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd.images.language_packages import (
    ImagePython,
    UnsafeImagePathError,
    compile_argv,
    move_into_rootfs,
    npm_install_argv,
    pip_install_argv,
)

TRIXIE_PYTHON = ImagePython.from_probe("3 13 2.41\n")


def test_the_probe_reads_the_image_python_and_glibc() -> None:
    """What the image's python3 prints gives its version and glibc, and where local packages go."""
    assert ImagePython(3, 13, (2, 41)) == TRIXIE_PYTHON
    assert TRIXIE_PYTHON.site_packages == "/usr/local/lib/python3.13/dist-packages"


def test_pip_installs_wheels_for_the_image_python_only(tmp_path: Path) -> None:
    """The pip command targets the image's site directory, CPython ABI and glibc: wheels only, pinned."""
    argv = pip_install_argv(
        "/venv/bin/python", tmp_path, TRIXIE_PYTHON, {"pandas": "3.1.1", "numpy": "2.5.5"}
    )
    assert argv[:4] == ["/venv/bin/python", "-m", "pip", "install"]
    assert "--only-binary=:all:" in argv
    assert "--no-compile" in argv
    assert argv[argv.index("--target") + 1] == str(tmp_path / "usr/local/lib/python3.13/dist-packages")
    assert argv[argv.index("--python-version") + 1] == "3.13"
    assert argv[argv.index("--abi") + 1] == "cp313"
    machine = os.uname().machine
    platforms = [a.removeprefix("--platform=") for a in argv if a.startswith("--platform=")]
    assert platforms[0] == f"manylinux_2_41_{machine}"
    assert f"manylinux_2_17_{machine}" in platforms
    assert f"manylinux_2_42_{machine}" not in platforms
    assert argv[-2:] == ["numpy==2.5.5", "pandas==3.1.1"]


def test_the_image_python_compiles_what_pip_installed() -> None:
    """The packages are compiled once at build time, by the image's own Python, into its site directory."""
    argv = compile_argv(TRIXIE_PYTHON)
    assert argv[:3] == ["python3", "-m", "compileall"]
    assert argv[-1] == "/usr/local/lib/python3.13/dist-packages"


def test_npm_never_runs_install_scripts(tmp_path: Path) -> None:
    """The npm command installs exact versions under the staging prefix with scripts off and nothing saved."""
    argv = npm_install_argv("/usr/bin/npm", tmp_path, {"lodash": "4.18.1", "@scope/pkg": "1.0.0"})
    assert argv[:4] == ["/usr/bin/npm", "install", "--prefix", str(tmp_path)]
    assert "--ignore-scripts" in argv
    assert "--no-save" in argv
    assert argv[-2:] == ["@scope/pkg@1.0.0", "lodash@4.18.1"]


def test_packages_are_moved_into_the_image(tmp_path: Path) -> None:
    """The staged tree lands at its destination inside the root filesystem, parents made."""
    staged = tmp_path / "staging" / "node_modules" / "lodash"
    staged.mkdir(parents=True)
    (staged / "index.js").write_text("module.exports = 1")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    destination = rootfs / "usr/local/lib/node_modules"
    move_into_rootfs(tmp_path / "staging" / "node_modules", rootfs, destination)
    assert (destination / "lodash" / "index.js").read_text() == "module.exports = 1"


def test_a_symlink_on_the_way_is_refused(tmp_path: Path) -> None:
    """A symlink among the destination's parents (it would lead out of the image) stops the move."""
    (tmp_path / "staging").mkdir()
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (rootfs / "usr" / "local").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeImagePathError, match="is a symlink in the image"):
        move_into_rootfs(tmp_path / "staging", rootfs, rootfs / "usr/local/lib/node_modules")
    assert not list((tmp_path / "elsewhere").iterdir())
