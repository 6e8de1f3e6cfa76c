"""Runtime images as containerd holds them after `scripts/dev test` built what was missing."""

from __future__ import annotations

import pytest

from sandboxd.engine.engine import Engine
from tests.helpers import images_of

pytestmark = pytest.mark.integration


async def test_images_share_one_base_layer(engine: Engine) -> None:
    """Every runtime image is the same Debian base layer plus one layer of its own."""
    states = list(images_of(engine).values())
    assert len(states) >= 24
    assert all(state.available for state in states), [s for s in states if not s.available]
    assert all(len(state.layers) == 2 for state in states), [(s.runtime, s.layers) for s in states]
    assert len({state.layers[0] for state in states}) == 1
