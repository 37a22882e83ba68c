"""``run_demo``: fine-tune MiniLM on a low-data SST-2 subsample with and without TempBalance, for a few seeds,
and report accuracy, the paired difference and the STD-of-alpha diagnosis (+ JSON and plots)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..diagnostics.progress import StepBar
from . import data as _data
from .finetune import Encoder, RunConfig, RunResult, TBSettings, batch_size_for, finetune
from .summary import alpha_std_line, markdown_table, summarize, verdict

from .defaults import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_SEEDS, DEFAULT_SIZE


def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads (``None``: leave torch's choice); returns the number in use."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def run_demo(
    *,
    size: int = DEFAULT_SIZE,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    out: str | Path | None = None,
    threads: int | None = 2,
    model_dir: str | Path | None = None,
    tb: TBSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune ``size`` stratified training sentences from the cleaned Rotten Tomatoes pool, FT and TB with
    the same lr, data, head initialisation and batch order per seed (the papers' recipe: AdamW wd 0.1, clipping
    at 1, 6 % warmup); test once at the end on SST-2 validation, reporting accuracy and the class-balanced
    macro-F1 and balanced accuracy. ``model_dir="mpnet"`` uses all-mpnet-base-v2 (assembled from its PyPI parts).

    Returns ``{"config", "summary", "runs", "markdown", "seconds"}``; with ``out`` also writes ``demo.json`` and
    the plots there. Missing model/data packages raise :class:`~tempbalance.demo.data.MissingDataError`.
    """
    start = time.perf_counter()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be a positive count or a non-empty list of seeds")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an integer >= 2 (one sentence per class at least), got {size!r}")
    used_threads = set_threads(threads)
    model_default = model_dir is None
    if model_dir == "mpnet":
        from .mpnet import mpnet_model_dir

        model_dir = mpnet_model_dir()
    model_dir = _data.default_model_dir() if model_default else Path(model_dir)
    test = _data.load_test_set()
    pool = _data.load_pool()
    encoder = Encoder(model_dir)
    encoded_test = encoder.encode(test)
    tb = tb or TBSettings()
    configs = [RunConfig(lr=lr, epochs=epochs, seed=s, tempbalance=arm == "TB", tb=tb)
               for s in seed_list for arm in ("FT", "TB")]
    trains = {s: _data.subsample(pool, size, s) for s in seed_list}
    steps = sum(math.ceil(size / (c.batch_size or batch_size_for(size))) * c.epochs for c in configs)
    bar = StepBar(steps, f"demo: {len(configs)} runs on {size} sentences", enabled=progress)
    results: list[RunResult] = []
    try:
        for c in configs:
            bar.note(f"seed {c.seed} {'TB' if c.tempbalance else 'FT'}")
            results.append(finetune(encoder, trains[c.seed], c, {"test": test}, encoded={"test": encoded_test},
                                    progress=bar.update))
    finally:
        bar.close()
    summary = summarize(results)
    report = dict(
        config=dict(size=size, seeds=seed_list, epochs=epochs, lr=lr, threads=used_threads, model=str(model_dir),
                    model_name="MiniLM-L6" if model_default else model_dir.name,
                    batch_size=results[0].batch_size, tb=vars(tb), pool=len(pool), test=len(test),
                    torch=torch.__version__),
        summary=summary, runs=[r.to_dict() for r in results], markdown=markdown_table(summary),
        seconds=time.perf_counter() - start,
    )
    for line in console_lines(report):
        log(line)
    if out is not None:
        written = write_outputs(report, results, Path(out))
        log("wrote " + ", ".join(str(p) for p in written))
    return report


def console_lines(report: dict[str, Any]) -> list[str]:
    """The comparison table and the STD-of-alpha reading, as printed by ``tempbalance demo``."""
    c = report["config"]
    lines = [f"{c['model_name']} fine-tuned on {c['size']} SST-2-style sentences (Rotten Tomatoes pool of {c['pool']}, "
             f"test = SST-2 validation, {c['test']} sentences, scored by accuracy and class-balanced macro-F1), "
             f"{c['epochs']} epochs, the same lr {c['lr']:g} for FT and TB, batch {c['batch_size']}, seeds {c['seeds']}",
             ""]
    lines.append(f"{'seed':>4}  {'FT acc %':>8}  {'TB acc %':>8}  {'TB-FT':>6}  {'FT F1 %':>7}  {'TB F1 %':>7}  "
                 f"{'alpha STD FT':>12}  {'alpha STD TB':>12}")
    runs = {(r["arm"], r["seed"]): r for r in report["runs"]}
    for s in c["seeds"]:
        ft, tb = runs["FT", s], runs["TB", s]
        lines.append(f"{s:>4}  {100 * ft['eval']['test']:8.2f}  {100 * tb['eval']['test']:8.2f}  "
                     f"{100 * (tb['eval']['test'] - ft['eval']['test']):+6.2f}  "
                     f"{100 * ft['scores']['test']['macro_f1']:7.2f}  {100 * tb['scores']['test']['macro_f1']:7.2f}  "
                     f"{ft['block_alpha_std']:12.4f}  {tb['block_alpha_std']:12.4f}")
    lines += ["", report["markdown"], ""]
    lines += [verdict(r) for r in report["summary"]] + [""]
    for r in report["summary"]:
        p = f"{r['t_p']:.3f}" if r["t_p"] is not None else "n/a (needs scipy and differences that vary)"
        lines.append(f"TB - FT: {r['gain_diff_mean']:+.2f} pp over {r['seeds']} seeds (TB better in {r['wins']}), "
                     f"paired t-test p = {p}.")
        lines.append(alpha_std_line(r))
    lines.append(f"({report['seconds']:.0f} s on {c['threads']} threads)")
    return lines


def write_outputs(report: dict[str, Any], results: Sequence[RunResult], out: Path) -> list[Path]:
    """``demo.json``, ``demo.md`` and the PNGs: paired accuracy, alpha per block FT vs TB, and (from the
    diagnostics module) alpha bars of the first seed's models and TB's alpha/factors over training."""
    from ..diagnostics import plots as diag
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "demo.json", out / "demo.md"]
    written[0].write_text(json.dumps(json_ready(report), indent=2))
    written[1].write_text(report["markdown"] + "\n")
    written.append(plots.paired_accuracy(results, out / "accuracy_ft_vs_tb.png"))
    written.append(plots.block_alpha_compare(results, out / "alpha_per_block_ft_vs_tb.png"))
    first = min(r.seed for r in results)
    for r in results:
        if r.seed != first:
            continue
        if r.report is not None:
            written.append(diag.alpha_bars(r.report, out / f"alpha_bars_{r.arm}_seed{first}.png", unit="block",
                                           title=f"{r.arm}, seed {first}: alpha per block after fine-tuning"))
        if r.tb_history:
            written.append(diag.alpha_over_training(r.tb_history, out / f"tb_over_training_seed{first}.png",
                                                    x="epoch", title=f"TB, seed {first}: alpha and LR factors"))
    return written


def json_ready(v: Any) -> Any:
    """``v`` with NaN/Inf as None and numpy values as Python ones (strict JSON)."""
    if isinstance(v, dict):
        return {str(k): json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    if hasattr(v, "tolist"):
        return json_ready(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
