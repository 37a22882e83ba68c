"""PyTorch Lightning: TempBalance returned from configure_optimizers as users write it - stepped per optimizer step,
refreshed at Lightning's epoch ends, resumed from a Lightning checkpoint."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tempbalance.training.scheduler import TempBalance
from test_scheduler import make_model, numpy_alpha

L = pytest.importorskip("lightning.pytorch")

LR, STEPS_PER_EPOCH = 1e-2, 4


def base_lr(t: int) -> float:
    """The LambdaLR below at step t, independently."""
    return LR / (1 + t)


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = make_model()
        self.tb: TempBalance | None = None
        self.lrs: list[list[float]] = []          # as each optimizer step reads them
        self.epoch_weights: list[dict[str, np.ndarray]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=LR)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))
        self.tb = TempBalance(self, opt, base_scheduler=sched, min_eigs=8, backend="torch")
        # a per-optimizer pre-hook runs after the global ones, so after TempBalance's refresh
        opt.register_step_pre_hook(lambda o, a, k: self.lrs.append([float(g["lr"]) for g in o.param_groups]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.tb, "interval": "step"}}

    def on_train_epoch_end(self):
        self.epoch_weights.append({u: self.net[int(u)].weight.detach().numpy().copy() for u in ("0", "3", "5")})


def loader():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(STEPS_PER_EPOCH * 8, 16, generator=g), torch.randint(0, 3, (STEPS_PER_EPOCH * 8,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def trainer(epochs: int, **kw):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


def fit(epochs: int = 2, module: Module | None = None, **kw) -> Module:
    torch.manual_seed(0)
    module = module or Module()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        trainer(epochs).fit(module, loader(), **kw)
    return module


def test_lightning_trains_with_tempbalance_as_its_scheduler():
    m = fit(2)
    tb = m.tb
    assert tb.step_count == 2 * STEPS_PER_EPOCH
    hist = tb.history  # reading runs the pass after the last epoch (Lightning counted it)
    assert [h["step"] for h in hist] == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    # each refresh saw the weights at its epoch's end
    for h, weights in zip(hist[1:], m.epoch_weights):
        for u in ("0", "3", "5"):
            assert h["alphas"][f"net.{u}"] == pytest.approx(numpy_alpha(weights[u]), rel=1e-4)
    # every optimizer step used base_lr(t) x the factors of the refresh in effect
    assert len(m.lrs) == 2 * STEPS_PER_EPOCH
    for t, lrs in enumerate(m.lrs):
        factors = hist[t // STEPS_PER_EPOCH]["factors"]
        expected = [base_lr(t) * (factors[u] if u is not None else 1.0) for u in tb.group_units]
        np.testing.assert_allclose(lrs, expected, rtol=1e-12, err_msg=f"step {t}")
    assert hist[1]["factors"] != hist[0]["factors"]  # the check covered two factor sets


def test_lightning_resume_from_a_checkpoint_continues_the_same_run(tmp_path):
    straight = fit(2)
    torch.manual_seed(0)
    first, t1 = Module(), trainer(1)
    path = tmp_path / "epoch1.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t1.fit(first, loader())
        t1.save_checkpoint(path)
    resumed = fit(2, Module(), ckpt_path=str(path))  # other initial weights: everything from the checkpoint
    assert [h["step"] for h in resumed.tb.history] == [h["step"] for h in straight.tb.history]
    assert resumed.tb.factors == straight.tb.factors
    np.testing.assert_allclose(resumed.lrs, straight.lrs[STEPS_PER_EPOCH:], rtol=1e-12)
