"""The policy seam: a custom policy given as ``TempBalance(policy=...)`` drives its knob exactly as written, and the
example in docs/ARCHITECTURE.md runs as printed."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tempbalance
from tempbalance.training.policies import CompatPolicy, MappedPolicy, Policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"
KW = dict(min_eigs=8, backend="torch")


def model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(96, 128), nn.ReLU(), nn.Linear(128, 112), nn.ReLU(), nn.Linear(112, 64))


def doc_example() -> str:
    text = DOC.read_text()
    block = re.search(r"<!-- custom-policy-example -->\n```python\n(.*?)```\n<!-- /custom-policy-example -->", text,
                      re.S)
    assert block, "docs/ARCHITECTURE.md lost its custom-policy example"
    return block.group(1)


def test_the_architecture_example_runs_and_sets_the_weight_decays_it_says():
    m = model()
    scope = {"torch": torch, "model": m}
    code = doc_example()
    assert len(code.strip().splitlines()) <= 22  # the 20-line example it promises
    exec(compile(code, str(DOC), "exec"), scope)
    tb, opt = scope["tb"], scope["opt"]
    alphas = tempbalance.analyze(m, min_eigs=50).alphas  # the example's TempBalance uses the generic default, 50
    tuned = {n: a for n, a in alphas.items() if np.isfinite(a)}
    assert tuned, "the example model must have fitted layers"
    root = {n: np.sqrt(a) for n, a in tuned.items()}
    mean = np.mean(list(root.values()))
    by_unit = dict(zip(tb.group_units, opt.param_groups))
    for name, r in root.items():
        assert by_unit[name]["weight_decay"] == pytest.approx(0.1 * r / mean, rel=1e-12)
        assert by_unit[name]["lr"] == 1e-3  # the lr is not this policy's knob
    assert tb.state_dict()["settings"]["target"] == "weight_decay"


class Constant(Policy):
    """Every unit's factor is ``2 ** k`` for its index k (a policy that ignores the spectra)."""

    def factors(self, unit_values, matrices):
        return 2.0 ** np.arange(unit_values.size)


def test_a_custom_lr_policy_drives_every_group_from_the_same_pass():
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    tb = tempbalance.TempBalance(m, opt, policy=Constant(), unit="layer", interval=2, **KW)
    assert tb.factors == {u: 2.0 ** k for k, u in enumerate(tb.units)}
    for g, u in zip(opt.param_groups, tb.group_units):
        assert g["lr"] == pytest.approx(0.1 * (2.0 ** tb.units.index(u) if u else 1.0))
    assert isinstance(tb.policy, Constant) and "Constant" in repr(tb)


def test_policy_refuses_what_it_replaces():
    m = model()
    with pytest.raises(ValueError, match=r"policy= decides \['s_lo'\]"):
        tempbalance.TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), policy=Constant(), s_lo=1.0)
    with pytest.raises(ValueError, match="compat"):
        tempbalance.TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), policy=Constant(), compat=True)
    with pytest.raises(TypeError, match="policy must be"):
        tempbalance.TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), policy="sqrt")
    with pytest.raises(ValueError, match="target must be one of"):
        Constant(target="momentum")


def test_the_default_policies_are_the_mapped_and_the_compat_ones():
    m = model()
    tb = tempbalance.TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), s_lo=1.5, **KW)
    assert isinstance(tb.policy, MappedPolicy) and tb.policy.mapping.s_lo == 1.5
    m2 = model()
    tb2 = tempbalance.TempBalance(m2, torch.optim.SGD(m2.parameters(), lr=0.1), compat=True, min_eigs=8)
    assert isinstance(tb2.policy, CompatPolicy) and tb2.policy.plan.scheme.name == "tempbalance_cnn"


class Bound(Constant):
    """Records what TempBalance binds it to; refuses when asked."""

    refuse = False

    def bind(self, units, blocks, plan):
        if self.refuse:
            raise ValueError("this policy cannot serve these units")
        self.seen = (list(units), list(blocks), plan)


@pytest.mark.parametrize("unit", ["block", "layer"])
def test_a_policy_is_bound_to_the_units_and_their_blocks_before_the_first_pass(unit):
    from compat_cases import tiny_llama

    m = tiny_llama()
    tb = tempbalance.TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), policy=Bound(), unit=unit, **KW)
    units, blocks, plan = tb.policy.seen
    assert units == tb.units and plan is None
    if unit == "block":
        assert blocks == units == ["model.layers.0", "model.layers.1"]
    else:
        assert len(units) == 14 and blocks == [u.rsplit(".", 2)[0] for u in units]
    seq = model()
    plain = tempbalance.TempBalance(seq, torch.optim.SGD(seq.parameters(), lr=0.1), policy=Bound(), **KW)
    assert plain.policy.seen[1] == [None] * 3  # the generic adapter knows no blocks
    refusing = Bound()
    refusing.refuse = True
    opt = torch.optim.SGD(seq.parameters(), lr=0.1)
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match="cannot serve"):
        tempbalance.TempBalance(seq, opt, policy=refusing, **KW)
    assert [dict(g) for g in opt.param_groups] == before
