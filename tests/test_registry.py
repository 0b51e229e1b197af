"""commons.Registry: the one mechanism behind the five component registries; a name registered twice is an error."""
from __future__ import annotations

import pytest

from commons import Registry
from model.aggregations import AGGREGATIONS
from model.attention import ATTENTIONS
from model.backbones import BACKBONES
from training.losses import CRITERIA
from training.mining import MINERS

REGISTRIES = {"aggregation": AGGREGATIONS, "attention": ATTENTIONS, "backbone": BACKBONES, "criterion": CRITERIA,
              "miner": MINERS}


def test_register_adds_under_the_name_and_returns_the_component() -> None:
    reg = Registry("thing")

    @reg.register("a")
    def a() -> int:
        return 1

    assert reg == {"a": a} and a() == 1
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        reg.register("a")(lambda: 2)
    assert reg["a"] is a


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_component_registry_is_a_registry_that_refuses_duplicates(kind: str) -> None:
    registry = REGISTRIES[kind]
    assert isinstance(registry, Registry) and registry.kind == kind and len(registry) >= 1
    name = next(iter(registry))
    before = dict(registry)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(name)(object())
    assert registry == before
