"""The select stage on its own (tempbalance/training/selection.py): which matrices, which unit each belongs to, which
parameters each unit's factor reaches, and how a checkpoint's fingerprint differs - without a TempBalance.

The expectations are read off the models' structure by hand (which module holds which parameter).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tempbalance.training import selection
from tempbalance.adapters import Adapter, MatrixSpec, get_adapter
from test_scheduler import make_model


def owned(chosen: selection.Selection, model: nn.Module) -> dict[str, str]:
    """parameter name -> the unit that owns it (parameters of no unit left out)."""
    return {n: chosen.owner[id(p)] for n, p in model.named_parameters() if id(p) in chosen.owner}


def select(model, opt=None, adapter="auto", **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if opt is None else opt
    return selection.select(model, opt, get_adapter(model, adapter), **{"min_eigs": 8, **kw})


class TwoBlocks(Adapter):
    """Block ``b0`` = layers 0-1 (Linear + LayerNorm) and 3, block ``b1`` = layers 5 and 7 of make_model; layer 7 is
    a head the adapter reports but does not tune."""

    name = "two_blocks"
    default_unit = "block"
    BLOCKS = {"0": "b0", "3": "b0", "5": "b1", "7": "b1"}

    def enumerate(self, model, include_embeddings=False):
        return [MatrixSpec(n, "linear", (lambda m=m: m.weight.detach()), self.BLOCKS[n], list(m.parameters()))
                for n, m in model.named_children() if isinstance(m, nn.Linear)]

    def tuned(self, spec):
        return spec.name != "7"

    def unit_params(self, model, specs, unit="block"):
        if unit == "layer":
            return super().unit_params(model, specs, unit)
        layers = {"b0": ["0", "1", "3"], "b1": ["5", "7"]}
        return {b: [p for n in names for p in model.get_submodule(n).parameters()] for b, names in layers.items()}


def test_every_layer_is_a_unit_with_the_generic_adapter():
    model = make_model()
    chosen = select(model)
    assert [s.name for s in chosen.specs] == chosen.units == chosen.spec_units == ["0", "3", "5", "7"]
    assert chosen.unit == "block" and chosen.plan is None and chosen.skipped == []
    assert chosen.fingerprint == [["0", [48, 16]], ["3", [48, 48]], ["5", [24, 48]], ["7", [3, 24]]]
    assert owned(chosen, model) == {f"{u}.{w}": u for u in ("0", "3", "5", "7") for w in ("weight", "bias")}
    assert [id(p) for p in chosen.params] == [id(p) for u in ("0", "3", "5", "7") for p in model[int(u)].parameters()]


def test_include_exclude_and_dropping_the_first_or_last_unit():
    model = make_model()
    assert select(model, exclude=r"^3$", remove_first=True).units == ["5", "7"]
    assert select(model, include=[r"^[03]$", r"^7$"], remove_last=True).units == ["0", "3"]
    chosen = select(model, include="^5$")
    assert chosen.units == ["5"] and set(owned(chosen, model)) == {"5.weight", "5.bias"}


@pytest.mark.parametrize("arg, value", [("include", "("), ("exclude", ["^0$", 3])])
def test_a_bad_pattern_names_its_argument(arg, value):
    with pytest.raises(ValueError, match=f"^{arg}: .* is not a valid regular expression"):
        select(make_model(), **{arg: value})


def test_blocks_drive_every_parameter_of_the_block_and_heads_stay_untuned():
    model = make_model()
    chosen = select(model, adapter=TwoBlocks())
    assert chosen.units == ["b0", "b1"] and chosen.spec_units == ["b0", "b0", "b1"]
    assert [s.name for s in chosen.specs] == ["0", "3", "5"]  # the head (7) is reported, not tuned
    assert owned(chosen, model) == {**{f"{n}.{w}": "b0" for n in ("0", "1", "3") for w in ("weight", "bias")},
                                    **{f"{n}.{w}": "b1" for n in ("5", "7") for w in ("weight", "bias")}}
    per_layer = select(model, adapter=TwoBlocks(), unit="layer", remove_first=True)
    assert per_layer.unit == "layer" and per_layer.units == per_layer.spec_units == ["3", "5"]
    assert owned(per_layer, model) == {f"{n}.{w}": n for n in ("3", "5") for w in ("weight", "bias")}


def test_a_parameter_shared_by_two_units_belongs_to_the_first():
    model = make_model()

    class Shared(TwoBlocks):
        def unit_params(self, model, specs, unit="block"):
            out = super().unit_params(model, specs, unit)
            out["b1"] = [model[1].weight] + out["b1"]  # the LayerNorm of b0, listed again
            return out

    chosen = select(model, adapter=Shared())
    assert chosen.owner[id(model[1].weight)] == "b0"
    assert sum(p is model[1].weight for p in chosen.params) == 1


def test_under_compat_every_tuned_matrix_is_a_unit_and_the_plan_places_the_norms():
    model = make_model()
    lm = select(model, compat="tempbalance_lm")
    assert lm.plan.scheme.name == "tempbalance_lm" and lm.unit == "layer"
    assert lm.units == lm.spec_units == [s.name for s in lm.specs] == ["0", "3", "5"]  # 7: 3 eigenvalues
    assert owned(lm, model)["1.weight"] == "0"  # the LayerNorm follows the Linear before it
    cnn = select(model, compat=True)  # no blocks: the NeurIPS'23 CNN scheme, whose norms go by name (bnK)
    assert cnn.plan.scheme.name == "tempbalance_cnn" and "1.weight" not in owned(cnn, model)


def test_nothing_to_analyse_is_one_warning_naming_what_was_not_analysed():
    model = nn.Sequential(nn.LSTM(4, 8))
    with pytest.warns(UserWarning, match=r"no matrix to analyse .*not analysed: 0\.weight_ih_l0"):
        chosen = select(model)
    assert chosen.specs == chosen.units == [] and chosen.owner == {}
    assert [n for n, _ in chosen.skipped][:2] == ["0.weight_ih_l0", "0.weight_hh_l0"]


def test_an_optimizer_over_another_model_is_refused():
    other = make_model(1)
    with pytest.raises(ValueError, match="none of the optimizer's 10 parameters belongs to the model"):
        select(make_model(), torch.optim.SGD(other.parameters(), lr=0.1))


def test_unit_mode():
    assert selection.unit_mode(get_adapter(make_model()), None) == "block"
    assert selection.unit_mode(TwoBlocks(), "layer") == "layer"
    with pytest.raises(ValueError, match="unit must be 'block', 'layer' or None"):
        selection.unit_mode(TwoBlocks(), "row")


def test_check_fingerprint_says_how_the_model_differs():
    mine = [["a", [4, 4]], ["b", [8, 4]], ["c", [2, 2]]]
    selection.check_fingerprint(mine, [list(x) for x in mine])
    with pytest.raises(ValueError, match=r"layers missing now: \['x'\]; new layers: \['c'\]; shapes changed: "
                                         r"\[\"'b' \(8, 8\) -> \(8, 4\)\"\]"):
        selection.check_fingerprint(mine, [["a", [4, 4]], ["b", [8, 8]], ["x", [2, 2]]])
    with pytest.raises(ValueError, match="the layers are in a different order"):
        selection.check_fingerprint(mine, [mine[1], mine[0], mine[2]])
