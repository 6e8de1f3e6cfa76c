"""How a build of runtime images shows its progress: one line per runtime, its state and time.

On a terminal the lines are redrawn in place; elsewhere (a log, CI) each change of
state is one plain line. What the build's tools print goes to a log file per
runtime, which a failure names.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TextIO

import attrs

# The builder's steps for one runtime, in order (with one more for each kind of language package).
STEPS: Final = ("installing packages", "packing its layer", "importing into containerd")
_ERASE_LINE: Final = "\x1b[2K"


class State(enum.Enum):
    """Where one runtime's build is."""

    QUEUED = "queued"
    BUILDING = "building"
    READY = "ready"
    CURRENT = "current"
    FAILED = "failed"


@attrs.define
class _Line:
    state: State = State.QUEUED
    step: int = 0
    steps: int = len(STEPS)
    detail: str = ""
    started: float | None = None
    ended: float | None = None


class BuildProgress:
    """The progress of one `sandboxd images build`, written to ``out``."""

    def __init__(
        self,
        names: Sequence[str],
        out: TextIO,
        logs: Path,
        *,
        redraw: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lines = {name: _Line() for name in names}
        self._out = out
        self.logs = logs
        self._redraw = redraw
        self._clock = clock
        self._drawn = 0
        self._width = max((len(name) for name in names), default=4)

    def log_path(self, name: str) -> Path:
        """Where the full output of ``name``'s build goes."""
        return self.logs / f"{name}.log"

    def add(self, name: str) -> None:
        """Show one more line (the shared base layer, built before the first runtime)."""
        if name not in self._lines:
            self._lines = {name: _Line(), **self._lines}
            self._width = max(self._width, len(name))

    def step(self, name: str, step: int, detail: str, *, of: int = len(STEPS)) -> None:
        """``name`` started step ``step`` (1-based) of ``of``."""
        line = self._lines[name]
        if line.started is None:
            line.started = self._clock()
        line.state, line.step, line.steps, line.detail = State.BUILDING, step, of, detail
        self._changed(name)

    def finished(self, name: str, state: State, detail: str) -> None:
        """``name`` is ready, was current already, or failed; ``detail`` says with what."""
        line = self._lines[name]
        line.state, line.detail, line.ended = state, detail, self._clock()
        self._changed(name)

    def text(self, name: str) -> str:
        """The line shown for ``name`` now."""
        line = self._lines[name]
        if line.state is State.QUEUED:
            status = "queued"
        elif line.state is State.BUILDING:
            status = f"step {line.step} of {line.steps}: {line.detail}"
        else:
            status = f"{line.state.value}: {line.detail}" if line.detail else line.state.value
        elapsed = ""
        if line.started is not None:
            elapsed = f" ({(line.ended or self._clock()) - line.started:.0f} s)"
        return f"{name:<{self._width}}  {status}{elapsed}"

    def tick(self) -> None:
        """Redraw the running clocks (on a terminal; plain output shows only changes)."""
        if self._redraw:
            self._draw()

    def _changed(self, name: str) -> None:
        if self._redraw:
            self._draw()
        else:
            self._out.write(self.text(name) + "\n")
            self._out.flush()

    def _draw(self) -> None:
        # Back to the first line drawn, then every line again, each erased first.
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        body = "".join(f"{_ERASE_LINE}{self.text(name)}\n" for name in self._lines)
        self._out.write(up + body)
        self._out.flush()
        self._drawn = len(self._lines)

    def counts(self) -> dict[State, int]:
        """How many runtimes are in each state."""
        counts = dict.fromkeys(State, 0)
        for line in self._lines.values():
            counts[line.state] += 1
        return counts
