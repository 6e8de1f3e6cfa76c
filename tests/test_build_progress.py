"""The progress of an image build: a line per runtime, redrawn in place or written once per change."""

from __future__ import annotations

import io
from pathlib import Path

from sandboxd.images.inspect import build_status, mark_building, unmark_building
from sandboxd.images.progress import BuildProgress, State
from tests.helpers import Clock


def _progress(out: io.StringIO, *, redraw: bool, clock: Clock) -> BuildProgress:
    return BuildProgress(["python", "go"], out, Path("/logs"), redraw=redraw, clock=clock)


def test_plain_output_is_a_line_per_change() -> None:
    """Without a terminal, each change of state is one line, with the time since the runtime started."""
    out, clock = io.StringIO(), Clock()
    progress = _progress(out, redraw=False, clock=clock)
    progress.step("python", 1, "installing python3-minimal")
    clock.now += 12
    progress.step("python", 2, "Python 3.11.2; packing")
    clock.now += 3
    progress.finished("python", State.READY, "python:bookworm, Python 3.11.2")
    progress.finished("go", State.FAILED, "mmdebstrap exited with status 1; log: /logs/go.log")
    assert out.getvalue().splitlines() == [
        "python  step 1 of 3: installing python3-minimal (0 s)",
        "python  step 2 of 3: Python 3.11.2; packing (12 s)",
        "python  ready: python:bookworm, Python 3.11.2 (15 s)",
        "go      failed: mmdebstrap exited with status 1; log: /logs/go.log",
    ]
    assert progress.counts()[State.READY] == progress.counts()[State.FAILED] == 1
    assert progress.log_path("go") == Path("/logs/go.log")


def test_terminal_output_is_redrawn_in_place() -> None:
    """On a terminal every line is drawn again over the last drawing, queued ones included."""
    out, clock = io.StringIO(), Clock()
    progress = _progress(out, redraw=True, clock=clock)
    progress.step("go", 1, "installing golang-go")
    first = out.getvalue()
    assert first == "\x1b[2Kpython  queued\n\x1b[2Kgo      step 1 of 3: installing golang-go (0 s)\n"
    clock.now += 7
    progress.tick()
    redrawn = out.getvalue()[len(first) :]
    assert redrawn.startswith("\x1b[2F")  # back up over the two lines drawn
    assert redrawn.endswith("\x1b[2Kgo      step 1 of 3: installing golang-go (7 s)\n")


def test_the_base_layer_gets_a_line_of_its_own() -> None:
    """The shared base layer, built before the runtimes, is shown above them."""
    out, clock = io.StringIO(), Clock()
    progress = _progress(out, redraw=True, clock=clock)
    progress.add("base (bookworm)")
    progress.step("base (bookworm)", 1, "essential packages")
    lines = out.getvalue().split("\n")
    assert lines[0] == "\x1b[2Kbase (bookworm)  step 1 of 3: essential packages (0 s)"


def test_build_markers_say_queued_or_building_while_their_builder_lives(tmp_path: Path) -> None:
    """A runtime a live build has queued or is building says so; a dead builder's marker says nothing."""
    queued = mark_building(tmp_path, "python", queued=True)
    assert (build_status(tmp_path, "python") or "").startswith("image build queued (since ")
    mark_building(tmp_path, "python")
    assert (build_status(tmp_path, "python") or "").startswith("image building (since ")
    unmark_building(queued)
    assert build_status(tmp_path, "python") is None
    (tmp_path / "ruby").write_text("999999999 0 building")
    assert build_status(tmp_path, "ruby") is None
