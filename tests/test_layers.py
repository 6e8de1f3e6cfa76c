"""Layers as differences between two root filesystems (pure file-system logic, in temporary directories)."""

from __future__ import annotations

import os
from pathlib import Path

from sandboxd.images.layers import add_whiteouts, diff_trees


def make_tree(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> None:
    """Create ``files`` (path -> content) and symlinks (path -> target) under ``root``."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        os.utime(path, (1, 1))
    for relative, target in (links or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(target)


def test_diff_lists_additions_changes_and_removals(tmp_path: Path) -> None:
    """New and changed files are in the layer, parents first; removed ones become whiteouts."""
    base, full = tmp_path / "base", tmp_path / "full"
    common = {"etc/passwd": "root", "usr/bin/sh": "dash", "usr/share/old/a": "1", "usr/share/keep": "k",
              "var/lib/status": "v1"}  # fmt: skip
    make_tree(base, common, {"bin": "usr/bin"})
    make_tree(
        full,
        {**{k: v for k, v in common.items() if not k.startswith("usr/share/old")},
         "var/lib/status": "v2", "usr/bin/python3": "py", "usr/lib/python3/x.py": "x"},
        {"bin": "usr/bin"},
    )  # fmt: skip
    diff = diff_trees(base, full)
    assert diff.changed == ("usr/bin/python3", "usr/lib", "usr/lib/python3", "usr/lib/python3/x.py",
                            "var/lib/status")  # fmt: skip
    assert diff.removed == ("usr/share/old",)
    assert add_whiteouts(full, diff.removed) == ["usr/share/.wh.old"]
    assert (full / "usr/share/.wh.old").stat().st_size == 0


def test_times_alone_are_no_change(tmp_path: Path) -> None:
    """The same content, owner and mode with another modification time stays in the base only."""
    base, full = tmp_path / "base", tmp_path / "full"
    make_tree(base, {"etc/os-release": "bookworm"})
    make_tree(full, {"etc/os-release": "bookworm"})
    os.utime(full / "etc/os-release", (99, 99))
    assert diff_trees(base, full).changed == ()


def test_mode_and_symlink_target_changes_count(tmp_path: Path) -> None:
    """A changed permission or a symlink pointing elsewhere is a change."""
    base, full = tmp_path / "base", tmp_path / "full"
    make_tree(base, {"usr/bin/tool": "t"}, {"usr/bin/alt": "tool"})
    make_tree(full, {"usr/bin/tool": "t"}, {"usr/bin/alt": "other"})
    (full / "usr/bin/tool").chmod(0o755)
    assert diff_trees(base, full).changed == ("usr/bin/alt", "usr/bin/tool")
