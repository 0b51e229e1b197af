"""commons.Registry: the one mechanism behind the five component registries; a name registered twice is an error."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cli import static_names
from cli.static_names import constant_keys, registered_names
from commons import Registry
from helpers import ROOT
from model.aggregations_dvgl import L2_MODES
from model.external_weights import OFF_THE_SHELF
from retrieval.query_methods import TEST_METHODS
from training.optim import OPTIMIZERS, SCHEDULERS
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


def test_the_names_read_from_the_sources_are_the_registries() -> None:
    """cli/static_names.py gives the parsers their choices without importing torch; it must see every registration
    (a registration form it does not understand would drop a name from the choices)."""
    assert registered_names() == {kind: tuple(sorted(reg)) for kind, reg in REGISTRIES.items()}
    assert constant_keys("training.optim", "OPTIMIZERS") == tuple(OPTIMIZERS)
    assert constant_keys("training.optim", "SCHEDULERS") == tuple(SCHEDULERS)
    assert constant_keys("retrieval.query_methods", "TEST_METHODS") == tuple(TEST_METHODS)
    assert constant_keys("model.external_weights", "OFF_THE_SHELF") == tuple(OFF_THE_SHELF)
    assert constant_keys("model.aggregations_dvgl", "L2_MODES") == tuple(L2_MODES)
    with pytest.raises(LookupError, match="not a literal"):
        constant_keys("training.optim", "no_such_table")


def test_a_registration_inside_a_loop_over_a_table_is_read(tmp_path, monkeypatch) -> None:
    """The forms of the module docstring, on a scratch package: decorator, alias, helper, loop over a dict."""
    pkg = tmp_path / "model"
    pkg.mkdir()
    (pkg / "things.py").write_text(
        'THINGS = Registry("thing")\nregister_thing = THINGS.register\n'
        'def register_big(name, size=1):\n    def deco(fn):\n        THINGS.register(name)(fn)\n        return fn\n'
        '    return deco\n'
        '@register_thing("a")\nclass A: pass\n@THINGS.register("b")\ndef b(): pass\n@register_big("c", 2)\ndef c(): pass\n'
        'TABLE = {"d": 1, "e": 2}\nfor _n, _v in TABLE.items():\n    register_big(_n)(lambda: _v)\n')
    monkeypatch.setattr(static_names, "ROOT", tmp_path)
    monkeypatch.setattr(static_names, "COMPONENT_PACKAGES", ("model",))
    static_names.registered_names.cache_clear()
    try:
        assert static_names.registered_names() == {"thing": ("a", "b", "c", "d", "e")}
    finally:
        static_names.registered_names.cache_clear()


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_help_imports_no_torch(script: str) -> None:
    """--help is answered from parsers that import no torch (start-up time: README, Speed)."""
    out = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")}
    assert "usage:" in out.stdout and "--aggregation {" in out.stdout
    assert "parser" in imported and not {"torch", "numpy", "torchvision"} & imported
