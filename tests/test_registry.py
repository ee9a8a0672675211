"""The strategy registry: builtins at import, duplicates refused, facts on the strategy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from designspace import Design, DesignSpaceError
from designspace.regime import Regime
from designspace.strategies import registry
from designspace.strategies.base import Strategy


class Dummy(Strategy):
    name, label, lr, color = "dummy", "D", 1e-3, "tab:cyan"
    sized = False

    def unit_cost(self, layer, roles):
        return 0

    def base_cost(self, layer, roles):
        return 1

    def init(self, layer, size, role, roles, options):
        return {}

    def transform(self, pet, role, x, out):
        return out


def test_builtins_are_there_whatever_is_registered_first():
    """A plug-in registered before any lookup used to hide the builtins (get('lora') failed)."""
    code = (
        "from designspace.strategies.base import Strategy\n"
        "from designspace.strategies import registry\n"
        "class P(Strategy):\n"
        "    name, label = 'plug', 'Q'\n"
        "    def unit_cost(self, layer, roles): return 1\n"
        "    def init(self, *a): return {}\n"
        "    def transform(self, pet, role, x, out): return out\n"
        "registry.register(P())\n"
        "print(registry.get('lora').name, sorted(registry.names()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("lora ") and "'plug'" in out and "'ia3'" in out


def test_a_taken_name_or_label_is_refused():
    with pytest.raises(DesignSpaceError, match="'lora' is already registered") as err:
        class Fake(Dummy):
            name, label = "lora", "Z"

        registry.register(Fake())
    assert "\n" not in str(err.value)
    with pytest.raises(DesignSpaceError, match="label 'L' is taken by 'lora'"):
        class Clash(Dummy):
            name, label = "clash", "L"

        registry.register(Clash())
    assert registry.get("lora").__class__.__name__ == "LoRA"


def test_a_new_strategy_is_usable_everywhere_from_its_own_facts():
    """What used to be hard-coded (labels, learning rates, colours) comes from the strategy."""
    registry.register(Dummy())
    try:
        d = Design(strategies=(("dummy", "lora"),) * 4)
        assert "{D,L}" in d.describe()
        assert Regime().lr_for("dummy") == 1e-3
        assert Regime(lr={"dummy": 0.5}).lr_for("dummy") == 0.5
    finally:
        registry.unregister("dummy")
    with pytest.raises(DesignSpaceError, match="regime.lr.dummy"):
        Regime(lr={"dummy": 0.1})


def test_every_builtin_states_its_facts():
    for name in registry.names():
        s = registry.get(name)
        assert s.name == name and len(s.label) == 1 and 0 < s.lr < 1 and s.color
        assert s.peft or s.peft_note, name  # export says what peft can hold, or why not
    assert registry.names()[-1] == "ia3"  # IA3: one module plus one line in _BUILTINS
    assert registry._BUILTINS[-1] == "ia3"
