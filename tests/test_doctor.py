"""`sandboxd doctor`'s pure checks (the command itself runs in test_cli)."""

from __future__ import annotations

import pytest

from sandboxd.ops.doctor import runsc_release


@pytest.mark.parametrize(
    ("line", "release"),
    [
        ("runsc version 0.0~20240729.0", 20240729),
        ("runsc version 0.0~20221219.0", 20221219),
        ("runsc version release-20250113.0", 20250113),
        ("runsc version 1.2.3", None),
    ],
)
def test_runsc_release_is_read_from_the_version_line(line: str, release: int | None) -> None:
    """Debian's and gVisor's spellings of a runsc release both give its date; others give none."""
    assert runsc_release(line) == release
