"""systemd's notification protocol (sd_notify): readiness, status, watchdog and stopping."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state to systemd over $NOTIFY_SOCKET; does nothing when the daemon runs without it."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval = int(watchdog_usec) / 2e6 if watchdog_usec.isdigit() and mine else None

    def send(self, *assignments: str) -> None:
        """Send one datagram of newline-separated assignments (e.g. "READY=1", "STATUS=...")."""
        if not self._address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto("\n".join(assignments).encode(), self._address)
            except OSError as error:
                log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), error)

    def ready(self, status: str) -> None:
        """Tell systemd the daemon serves."""
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """A one-line status for `systemctl status`."""
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        """Tell systemd the daemon is shutting down."""
        self.send("STOPPING=1", "STATUS=stopping")

    async def keep_watchdog_fed(self) -> None:
        """Send WATCHDOG=1 at half the watchdog interval, from the event loop (so a stuck loop is caught)."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)
