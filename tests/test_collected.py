"""The collector's records: read strictly, whatever a compromised sandbox writes."""

from __future__ import annotations

import base64
import struct

import pytest

from sandboxd.engine.files import CollectedFormatError, parse_collected
from sandboxd.models import MAX_OUTPUT_FILES, OUTPUT_FILE_BYTES


def _record(kind: bytes, name: bytes, data: bytes) -> bytes:
    return kind + struct.pack(">I", len(name)) + name + struct.pack(">I", len(data)) + data


def test_files_and_skips_are_read() -> None:
    """File records become base64 output files; skip records become one line each."""
    data = _record(b"F", b"out/a.png", b"\x89PNG") + _record(b"S", b"b.bin", b"too large")
    found = parse_collected(data, exit_code=0, truncated=False)
    files = [(f.name, f.size, base64.b64decode(f.content)) for f in found.files]
    assert files == [("out/a.png", 4, b"\x89PNG")]
    assert found.skipped == ("output file b.bin not returned: too large",)


@pytest.mark.parametrize(
    "data",
    [
        b"X" + struct.pack(">I", 1) + b"a" + struct.pack(">I", 0),  # unknown type
        _record(b"F", b"a", b"abc")[:-1],  # cut short
        _record(b"F", b"../etc/passwd", b""),  # leaves the workspace
        _record(b"F", b"/etc/passwd", b""),  # absolute
        _record(b"F", b"a\xff", b""),  # not UTF-8
        b"F" + struct.pack(">I", 5000) + b"a" * 5000 + struct.pack(">I", 0),  # name too long
        b"F" + struct.pack(">I", 1) + b"a" + struct.pack(">I", OUTPUT_FILE_BYTES + 1),  # file too large
        b"".join(_record(b"F", f"f{i}".encode(), b"") for i in range(MAX_OUTPUT_FILES + 1)),
    ],
)
def test_broken_records_are_refused(data: bytes) -> None:
    """Anything outside the format is an error, never a file."""
    with pytest.raises(CollectedFormatError):
        parse_collected(data, exit_code=0, truncated=False)


def test_a_failed_collector_yields_nothing() -> None:
    """A collector that failed or overflowed its output is not believed, whatever it wrote."""
    good = _record(b"F", b"a", b"x")
    with pytest.raises(CollectedFormatError, match="ended with status 1"):
        parse_collected(good, exit_code=1, truncated=False)
    with pytest.raises(CollectedFormatError, match="wrote more than it may"):
        parse_collected(good, exit_code=0, truncated=True)
