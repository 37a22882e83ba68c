"""Regenerate the images of docs/DIAGNOSTICS.md from the real MiniLM-L6 (offline; about a minute of CPU in all):

    HF_HUB_OFFLINE=1 python3 docs/img/make_diagnostics_images.py [analysis] [training]     (default: both)
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
STEPS, INTERVAL = 120, 10


def shrink(src: Path, dst: Path, colors: int = 96) -> None:
    """A palette PNG: the plots have few colours, so this keeps them sharp at a fraction of the size."""
    from PIL import Image

    Image.open(src).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def analysis_images(model, tmp: Path) -> None:
    """alpha per layer and per block, and the ESD of one FFN layer."""
    import tempbalance
    from tempbalance.diagnostics import layer_eigenvalues, plots

    report = tempbalance.analyze(model)
    shrink(plots.alpha_bars(report, tmp / "a.png", unit="layer", dpi=80), HERE / "minilm_alpha_layers.png")
    shrink(plots.alpha_bars(report, tmp / "b.png", unit="block", dpi=80), HERE / "minilm_alpha_blocks.png")
    name = "encoder.layer.0.intermediate.dense"
    eigs = layer_eigenvalues(report, model, layers=[name], show_progress=False)[name]
    row = report[name]
    shrink(plots.esd_plot(eigs, tmp / "e.png", alpha=row.alpha, xmin=row.xmin, n_tail=row.n_tail,
                          title=f"MiniLM-L6 {name}", note=f"KS = {row.ks_distance:.3f}", dpi=80),
           HERE / "minilm_esd_intermediate.png")


def training_image(model, tmp: Path) -> None:
    """A short fine-tune with TempBalance (block units, re-analysed every INTERVAL steps): regress the [CLS]
    embedding of random token sequences onto a random target."""
    from tempbalance import TempBalance
    from tempbalance.diagnostics import TrainingLog

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    tb = TempBalance(model, opt, interval=INTERVAL)
    log = TrainingLog(tb)
    g = torch.Generator().manual_seed(1)
    target = torch.randn(model.config.hidden_size, generator=g)
    for _ in range(STEPS):
        ids = torch.randint(1000, 20000, (8, 32), generator=g)
        loss = ((model(input_ids=ids).last_hidden_state[:, 0] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        tb.step()
    log.close()
    title = f"MiniLM-L6 fine-tune, {STEPS} steps, refresh every {INTERVAL}"
    shrink(log.plot(tmp / "h.png", dpi=80, title=title), HERE / "minilm_alpha_over_training.png")


def main(parts: list[str]) -> None:
    from tempbalance.cli import default_model_dir
    from transformers import AutoModel

    unknown = set(parts) - {"analysis", "training"}
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}; choose from: analysis training")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(str(default_model_dir()), local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        if "analysis" in parts or not parts:
            analysis_images(model, Path(tmp))
        if "training" in parts or not parts:
            training_image(model, Path(tmp))
    for p in sorted(HERE.glob("minilm_*.png")):
        print(f"{p.name}: {p.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
