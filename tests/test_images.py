"""Runtime images as containerd holds them after `scripts/dev test` built what was missing."""

from __future__ import annotations

import pytest

from sandboxd.engine.engine import Engine
from tests.helpers import images_of, shipped_runtimes

pytestmark = pytest.mark.integration


async def test_images_share_their_layers(engine: Engine) -> None:
    """One Debian base layer per suite for all; an image built on another's has its layers, then one more."""
    states = images_of(engine)
    runtimes = {runtime.name: runtime for runtime in shipped_runtimes()}
    assert set(states) == set(runtimes)
    assert all(state.available for state in states.values()), [s for s in states.values() if not s.available]
    bases: dict[str, set[str]] = {}
    for name, state in states.items():
        recipe = runtimes[name].build
        bases.setdefault(recipe.suite, set()).add(state.layers[0])
        if recipe.extends is None:
            assert len(state.layers) == 2, (name, state.layers)
        else:
            below = states[recipe.extends].layers
            assert state.layers[: len(below)] == below, (name, recipe.extends)
            assert len(state.layers) == len(below) + 1, (name, state.layers)
    assert all(len(layers) == 1 for layers in bases.values()), bases
