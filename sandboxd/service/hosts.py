"""One host among several: its name in the shared store, and its registration there."""

from __future__ import annotations

import socket

from sandboxd.config import Config
from sandboxd.engine.sandbox import host_id_for


def host_id(config: Config) -> str:
    """The daemon's name in claims and in the hosts table: the configured one, or host name and state dir.

    Stable across restarts (a restarted host settles what it held), distinct for two
    daemons on one machine (each has a state directory of its own).
    """
    return config.store.host_id or f"{socket.gethostname()}-{host_id_for(config.paths.state)[:8]}"
