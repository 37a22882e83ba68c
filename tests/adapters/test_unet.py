"""UNet adapter: every conv of MONAI's BasicUNet or a plain UNet, unit "layer"; "block" = conv + its norm."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from schedule_cases import SCHEDULES, assert_sigmoid_factors, run_checked
from tempbalance.adapters import get_adapter
from tempbalance.training.scheduler import TempBalance

monai = pytest.importorskip("monai")
from monai.networks.nets import BasicUNet  # noqa: E402


def basic_unet(seed=0):
    torch.manual_seed(seed)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(8, 8, 16, 16, 16, 8))


class PlainUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.out = nn.Conv2d(32, 1, 1)

    def forward(self, x):
        d = self.down(x)
        return self.out(torch.cat([d, self.up(self.mid(d))], 1))


def data(n, out_channels=2):
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(2, 1, 32, 32, generator=g), torch.randn(2, out_channels, 32, 32, generator=g))
            for _ in range(n)]


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def test_basic_unet_layers():
    m = basic_unet()
    a = get_adapter(m)
    assert a.name == "unet" and a.default_unit == "layer"
    convs = [n for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [s.name for s in a.enumerate(m)] == convs
    blocks = a.unit_params(m, a.enumerate(m), "block")
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in blocks["down_1.convs.conv_0"]} == {
        n for n, _ in m.named_parameters() if n.startswith("down_1.convs.conv_0.")}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_training_under_every_schedule(schedule):
    m = basic_unet()
    tb = run_checked(m, mse, data(4), schedule, backend="torch", interval=2)
    assert tb.unit == "layer" and len(tb.units) == 23
    assert tb.factors["conv_0.conv_0.conv"] == 1.0  # (8, 1, 3, 3): 9 eigenvalues < 50, untuned
    assert_sigmoid_factors(tb)


def test_plain_unet_detected_by_name():
    m = PlainUNet()
    assert get_adapter(m).name == "unet"
    tb = run_checked(m, mse, data(3, out_channels=1), "step", backend="torch", interval=1, min_eigs=10)
    assert tb.units == ["down.0", "mid.0", "up", "out"]
    tb2 = TempBalance(m, torch.optim.SGD(m.parameters(), lr=0.1), unit="block", backend="torch", min_eigs=10)
    bn = {id(p) for p in m.down[1].parameters()}
    assert [u for g, u in zip(tb2.optimizer.param_groups, tb2.group_units) if {id(p) for p in g["params"]} & bn] \
        == ["down"]


def test_narrow_1d_unet_layers_are_tuned_by_default():
    """A 16-channel kernel-3 Conv1d pools 3 x 16 = 48 eigenvalues: above the UNet adapter's minimum (32)."""
    from tempbalance import analyze

    torch.manual_seed(0)
    m = BasicUNet(spatial_dims=1, in_channels=1, out_channels=1, features=(16, 16, 32, 64, 128, 16))
    rep = analyze(m, backend="torch")
    narrow = [r for r in rep.rows if r.n_eigs == 48]
    assert narrow and all(r.ok for r in narrow), [(r.name, r.status) for r in narrow]
