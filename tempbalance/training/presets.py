"""The papers' published TempBalance configurations, as data you can read and override.

    kwargs = tempbalance.presets.get("modelbalancing-glue", ratio=0.0002, steps_per_epoch=len(train_loader))
    tb = tempbalance.TempBalance(model, optimizer, base_scheduler=sched, **kwargs)
    tempbalance.presets.training("modelbalancing-glue", ratio=0.0002)   # lr, batch size, epochs, ... of that run
    print(tempbalance.presets.describe("modelbalancing-glue"))          # everything, with its sources

Every value names the script and config line it was read from (repository at a fixed commit). ``get`` returns
:class:`~tempbalance.TempBalance` keyword arguments; any of them can be overridden (``get(name, s_lo=1.0)``).
``training`` returns the rest of the published recipe (optimizer, learning rate, batch size, schedule, ...), which
TempBalance does not set. Some presets take options of their own, which build TempBalance arguments afresh at every
``get`` (the AlphaDecay presets: ``assign=``, ``wd_min_ratio=``, ``wd_max_ratio=``, ``sigmoid_alpha=`` make the
``policy``, ``every=`` the ``interval``). ``reference`` names the scheme of :mod:`tempbalance.compat` the preset reproduces (its
``compat=`` argument); ``reference_only`` lists what that code does that TempBalance does not reproduce.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import compat
from .alphadecay import AlphaDecay
from .arguments import NAMES
from .cadence import BeforeEveryN

_MB = "ZihangHLiu/ModelBalancing@9970cea5a7b7c7ddc65424f9a75ce6016954c3ae"
_TB = "YefanZhou/TempBalance@9f0d9c7e86b70c6613ac3b44b5fd147873050823"
_LM = "ZihangHLiu/TempBalance-LM@843878f386b9460487449da03df09dd82cfe398f"
_AD = "hed-ucas/AlphaDecay@23ce27ca318bdd3f1942fff95a9bc680b31245f4"


@dataclass(frozen=True)
class Variant:
    """One row of a preset's table: overrides of its ``tempbalance`` / ``training`` values, and where they are."""

    tempbalance: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class Preset:
    """A published configuration.

    ``choose_by`` is the keyword that picks a :class:`Variant` (``ratio=``, ``model=``, ...); ``default`` is the
    variant used when it is not given (``None``: it must be given where a variant changes TempBalance's arguments).
    ``interval_rule``: ``"reference"`` when the reference derives the interval from the data loader
    (:func:`tempbalance.compat.reference_interval`; ``get`` then needs ``steps_per_epoch=`` or ``interval=``).
    ``options``: keywords of the preset itself (not TempBalance's) with their published values - a variant's
    ``tempbalance`` may set them too; ``build`` maps a TempBalance argument to the function that makes it from the
    options its keywords name, afresh at every ``get`` (a policy object, a cadence: each serves one TempBalance).
    """

    name: str
    paper: str
    reference: str
    repository: str
    sources: tuple[str, ...]
    tempbalance: Mapping[str, Any]
    training: Mapping[str, Any]
    choose_by: str | None = None
    variants: Mapping[Any, Variant] = field(default_factory=dict)
    default: Any = None
    interval_rule: str | None = None
    reference_only: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    build: Mapping[str, Callable[..., Any]] = field(default_factory=dict)


_GLUE_RATIO = {  # configs_sigmoid.txt (TB) and configs.txt (FT baseline): lr, batch size, (sigmoid_min, sigmoid_max)
    0.0002: (3e-5, 4, (0.25, 0.25), "3-5", 3e-5, 4, "3-5"),
    0.0005: (3e-5, 8, (1.25, 1.25), "6-8", 2e-5, 4, "6-8"),
    0.001: (3e-5, 16, (1.25, 1.25), "9-11", 3e-5, 16, "9-11"),
    0.005: (2e-5, 16, (1.0, 1.0), "12-14", 2e-5, 16, "12-14"),
    0.01: (3e-5, 16, (1.0, 1.0), "15-17", 3e-5, 16, "15-17"),
    0.05: (3e-5, 32, (2.0, 1.0), "18-20", 2e-5, 32, "18-20"),
}

_FNO_REDUCED_BATCH = {  # fno_2dcfd.txt TB rows: reduced_batch -> (sigmoid_min, sigmoid_max) in columns 15-16, line
    1: ((0.125, 0.125), 29),
    2: ((0.5, 0.5), 30),
    4: ((1.0, 1.0), 31),
    10: ((0.25, 0.25), 32),
    40: ((0.5, 0.5), 33),
    180: ((1.0, 1.0), 34),
}

_CIFAR_LR = {  # bash_scripts/config/tb.txt "TB" rows: lr (column 8)
    "cifar100-resnet18": (0.1, 13), "cifar100-resnet34": (0.1, 14), "cifar100-vgg16": (0.05, 15),
    "cifar100-vgg19": (0.05, 16), "cifar10-resnet18": (0.1, 51), "cifar10-vgg16": (0.05, 52),
}

PRESETS: dict[str, Preset] = {}


def _add(p: Preset) -> None:
    PRESETS[p.name] = p


_add(Preset(
    name="modelbalancing-glue",
    paper="Liu et al., Model Balancing Helps Low-data Training and Fine-tuning (EMNLP 2024): RoBERTa-base on GLUE",
    reference="modelbalancing",
    repository=_MB,
    sources=(
        "bash_scripts/run_glue_block_tb_sigmoid_roberta_base_ratio.sh:13-23 (warmup 0.06, weight_decay 0.1, "
        "max_seq_length 128, temp_balance_lr tb_layer_blocks, metric alpha, fix_fingers xmin_mid, xmin_pos 1.5, "
        "remove_last_layer True)",
        "config_files/configs_sigmoid.txt:3-20 (per data ratio: lr, batch size, tb_unit block, schedule_func "
        "sigmoid, tb_lr_normalize False, after_warm False, sigmoid_min, sigmoid_max)",
        "config_files/configs.txt:3-20 and bash_scripts/run_glue_baseline_roberta_base_ratio.sh (the FT baseline)",
        "transformers/src/transformers/training_args.py:1393 (exp_temp 10), :1426 (esd_interval 100)",
        "transformers/src/transformers/trainer.py:1680-1684 (interval), :1973-2148 (ESD, assignment)",
    ),
    tempbalance=dict(unit="block", mapping="sigmoid", tau=10.0, xmin_pos=1.5, xmin_rule="median", min_eigs=50,
                     remove_last=True, normalize=False, compat="modelbalancing"),
    training=dict(model="FacebookAI/roberta-base", task="qnli", epochs=10, warmup_ratio=0.06, weight_decay=0.1,
                  weight_decay_on="every parameter but biases and LayerNorm weights (HF Trainer's default groups)",
                  max_seq_length=128, optimizer="AdamW (torch; betas 0.9, 0.999; eps 1e-8)",
                  schedule="linear with warmup (HF 'linear'), stepped per optimizer step", max_grad_norm=1.0,
                  seeds=(13, 37, 43), data="the first ratio x len(train) examples of the GLUE train split"),
    choose_by="ratio",
    variants={r: Variant(tempbalance=dict(s_lo=s[0], s_hi=s[1]),
                         training=dict(lr=lr, batch_size=bs, baseline_lr=blr, baseline_batch_size=bbs),
                         source=f"config_files/configs_sigmoid.txt:{lines}; configs.txt:{blines}")
              for r, (lr, bs, s, lines, blr, bbs, blines) in _GLUE_RATIO.items()},
    interval_rule="reference",
))

_add(Preset(
    name="modelbalancing-fno-cfd",
    paper="Liu et al., Model Balancing (EMNLP 2024): FNO on PDEBench 2D compressible Navier-Stokes (CFD)",
    reference="modelbalancing_fno",
    repository=_MB,
    sources=(
        "sciml/pdebench/txt_files/fno_2dcfd.txt:29-34 (the TB rows; lr_min_ratio / lr_slope columns are "
        "tb_std_sigmoid's sigmoid_min / sigmoid_max, utils.py:656-658)",
        "sciml/pdebench/models/config/args/config_2DCFD_TB.yaml (unroll_step, t_train, initial_step, "
        "reduced_resolution, scheduler_step, scheduler_gamma)",
        "sciml/pdebench/models/fno/train.py:174-268 (initial ESD, groups), :457-578 (per-epoch ESD after "
        "scheduler.step(), eigs_thres, xmin_pos 2, filter_zeros True)",
        "sciml/pdebench/models/fno/utils.py:481-634 (estimator), :638-674 (tb_std_sigmoid, exp_temp)",
    ),
    tempbalance=dict(unit="layer", mapping="sigmoid", tau=10.0, xmin_pos=2.0, xmin_rule="median", min_eigs=12,
                     filter_zeros=True, interval=None, compat="modelbalancing_fno", adapter="generic"),
    training=dict(model="FNO2d (modes 12, width 20, initial_step 10, 4 channels)",
                  data="2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5, every reduced_batch-th sample, "
                       "reduced_resolution 2, t_train 21",
                  lr=2.5e-3, batch_size=20, epochs=700, optimizer="Adam with L2 weight decay 1e-4 (coupled)",
                  weight_decay=1e-4, schedule="StepLR(step_size=100, gamma=0.5), stepped per epoch",
                  seeds=(2024, 2023, 2022)),
    choose_by="reduced_batch",
    variants={rb: Variant(tempbalance=dict(s_lo=s[0], s_hi=s[1]),
                          training=dict(data_fraction=1.0 / rb),
                          source=f"sciml/pdebench/txt_files/fno_2dcfd.txt:{line}")
              for rb, (s, line) in _FNO_REDUCED_BATCH.items()},
    reference_only=(
        "an nn.Conv1d weight is analysed without the reshape a Conv2d gets (utils.py:526-531: a batch of "
        "(in, kernel) matrices); tempbalance slices it like a Conv2d",
        "a layer whose filtered eigenvalue count crosses min_eigs during training shifts the reference's "
        "index-based reassignment (train.py:549-557) onto other groups; tempbalance gives that layer factor 1",
    ),
))

_add(Preset(
    name="tempbalance-cifar",
    paper="Zhou et al., Temperature Balancing, Layer-wise Weight Analysis, and Neural Network Training "
          "(NeurIPS 2023): ResNet / VGG on CIFAR-10/100",
    reference="tempbalance_cnn",
    repository=_TB,
    sources=(
        "bash_scripts/config/tb.txt:13-16 (CIFAR100 TB), :51-52 (CIFAR10 TB): pl_fitting median, remove_first "
        "True, remove_last True, metric alpha, assign_func tb_linear_map, batchnorm True, lr_min_ratio 0.5, "
        "lr_max_ratio 1.5, xmin_pos 2, batchnorm_type name, optim SGD, 200 epochs, cosine, weight decay 5e-4",
        "bash_scripts/train_tb.sh:47 (seeds 43 37 13 51 71)",
        "main_tb.py:38 (batch size 128), :200-221 (SGD momentum 0.9), :367-372 (per-epoch TB step)",
        "tempbalance.py:12-30 (eigs_thresh 50, conv_norm 0.5), config.py:34-38 (cosine_decay)",
    ),
    tempbalance=dict(unit="layer", mapping="linear", s1=0.5, s2=1.5, xmin_pos=2.0, xmin_rule="median", min_eigs=50,
                     remove_first=True, remove_last=True, interval=None, compat="tempbalance_cnn", adapter="generic"),
    training=dict(optimizer="SGD (momentum 0.9)", weight_decay=5e-4, batch_size=128, epochs=200,
                  schedule="per epoch: after epoch e the base lr is lr * 0.5 * (1 + cos(pi * e / 200)) "
                           "(config.py cosine_decay; epoch 1 runs at lr too)",
                  seeds=(43, 37, 13, 51, 71)),
    choose_by="model",
    variants={k: Variant(training=dict(lr=lr), source=f"bash_scripts/config/tb.txt:{line}")
              for k, (lr, line) in _CIFAR_LR.items()},
))

_add(Preset(
    name="tempbalance-lm-ptb",
    paper="Zhou et al., Temperature Balancing (NeurIPS 2023): 3-layer tensorised Transformer on Penn Treebank",
    reference="tempbalance_lm",
    repository=_LM,
    sources=(
        "BTD-Transformer/scripts/txt/ptb_tb.txt:2-16 (lr 0.000125, pl_fitting median, remove_last True, "
        "assign_func tb_linear_map, layernorm True, lr_min_ratio 1.0, lr_slope 1.0, xmin_pos 2, max_epoch 200, "
        "esd_interval 1 / 10 / 25, adam, n_layer 3, max_step 40000, batch_size 120, tb_update stage)",
        "BTD-Transformer/scripts/tensorized/run_ptb_tb.sh:13 (runs rows 2-6: esd_interval 1), :37-69 (d_model 256, "
        "n_head 1, d_head 40, d_inner 2100, dropout 0.3, tgt_len 32)",
        f"{_TB}: language_modeling/BTD-Transformer/train_tb.py:104-114 (eigs_thresh 50), :319-333 (LayerNorm -> "
        "Linear), :354-369 (remove_last, then the eigenvalue threshold; remove_first is never applied), "
        ":534-621 (clip 0.25, per-step cosine, ESD after the update)",
    ),
    tempbalance=dict(unit="layer", mapping="linear", s1=1.0, s2=2.0, xmin_pos=2.0, xmin_rule="median", min_eigs=50,
                     remove_first=False, remove_last=True, compat="tempbalance_lm", adapter="generic"),
    training=dict(optimizer="Adam", lr=1.25e-4, max_steps=40000, max_epoch=200, batch_size=120, tgt_len=32,
                  clip=0.25, schedule="cosine per optimizer step to 0 at max_steps", seeds=(51, 13, 71, 37, 43),
                  model="n_layer 3, d_model 256, n_head 1, d_head 40, d_inner 2100, dropout 0.3"),
    choose_by="esd_interval",
    variants={k: Variant(tempbalance=dict(interval=k), source=f"BTD-Transformer/scripts/txt/ptb_tb.txt:{lines}")
              for k, lines in ((1, "2-6"), (10, "7-11"), (25, "12-16"))},
    default=1,
))


def _alphadecay_interval(every: int) -> BeforeEveryN:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every (the reference's --unbalancedWD_every) must be an integer >= 1, got {every!r}")
    return BeforeEveryN(every)


# the AlphaDecay presets' policy and cadence, from their options
_AD_BUILD = dict(policy=AlphaDecay, interval=_alphadecay_interval)


_AD_ARGS = dict(compat="alphadecay", adapter="generic", unit="layer", xmin_pos=2.0, xmin_rule="median", min_eigs=50,
                filter_zeros=False, remove_first=True, remove_last=True)
_AD_OPTIONS = dict(assign="tb_linear_map", wd_min_ratio=0.6666, wd_max_ratio=5.0, sigmoid_alpha=4.0, every=500)
_AD_CODE = (
    "LLaMa-pretraining/torchrun_main.py:97-111 (pl_fitting median, xmin_pos 2, remove_first / remove_last True, "
    "batchnorm True by name, filter_zeros False), :334-350 (the groups from the initial weights), :368-373 and :120 "
    "(cosine, min_lr_ratio 0.1), :418-427 (the pass before update update_step when (update_step + 1) % every == 0)",
    "LLaMa-pretraining/WeightDecayUnbalance.py:17-37 (eigs_thresh 50, conv_norm 0.5, sigmoid_alpha 4), :72-137 "
    "(groups, untuned parameters at the base weight decay), :173-180 (step), :197-310 (ESD), :321-361 (assign "
    "functions)",
    "LLaMa-pretraining/peft_pretraining/training_utils.py:128-143 (warmup from 0, then cosine to min_lr_ratio)",
)
_AD_REFERENCE_ONLY = (
    "esd_metric_for_tb='gradnorm' (scripts/*/baseline2: the AdaDecay baseline, layerwise_sigmoid over gradient "
    "norms, no eigenvalue threshold) follows no spectrum; tempbalance policies follow alpha, spectral_norm, "
    "stable_rank or alpha_hat",
    "the published scripts pass --alpha_positively_with_WD, which torchrun_main.py's parser does not define, and "
    "--use_modulewise_wd without a value (type=bool): as published they stop in argparse; the preset takes the "
    "values they set",
)

_add(Preset(
    name="alphadecay-llama-adam",
    paper="He et al., AlphaDecay: Module-wise Weight Decay for Heavy-Tailed Balancing in LLMs (NeurIPS 2025): LLaMA "
          "pre-training on C4 with Adam (L2 weight decay); reported LLaMA-1B validation perplexity 14.66 (uniform "
          "weight decay 5e-6) -> 14.55",
    reference="alphadecay",
    repository=_AD,
    sources=(
        "LLaMa-pretraining/scripts/Adam/ours/{1e-5,5e-6,1e-6}.sh:6-21 (the first of six runs, seeds 5-10: "
        "configs/llama_130m.json, adam, lr 0.001, batch 256 on 2 GPUs, 20000 steps, warmup 2000, "
        "--unbalancedWD_every 500, --esd_metric_for_tb alpha, --assign_func tb_linear_map, --wd_min_ratio 0.6666, "
        "--wd_max_ratio 3 / 5 / 5, bfloat16)",
        "LLaMa-pretraining/torchrun_main.py:359 (torch.optim.Adam: the weight decay is added to the gradient)",
        *_AD_CODE,
        "README.md, results table (uniform vs AlphaDecay perplexity at 60M-1B, weight decay 1e-5 / 5e-6 / 1e-6; the "
        "scripts of the 60M, 350M and 1B runs are not in the repository)",
    ),
    tempbalance=_AD_ARGS,
    training=dict(model="LLaMA-130M (configs/llama_130m.json)", data="C4 (en), t5-base tokenizer, max_length 256",
                  optimizer="Adam (torch; weight decay coupled: added to the gradient)", lr=1e-3, batch_size=512,
                  max_steps=20000, warmup_steps=2000, min_lr_ratio=0.1,
                  schedule="linear warmup from 0 over warmup_steps, then cosine to min_lr_ratio x lr at max_steps, "
                           "stepped per update", seeds=(5, 6, 7, 8, 9, 10), dtype="bfloat16"),
    choose_by="weight_decay",
    variants={wd: Variant(tempbalance=dict(wd_max_ratio=hi), training=dict(weight_decay=wd),
                          source=f"LLaMa-pretraining/scripts/Adam/ours/{f}.sh:14, 20-21")
              for wd, hi, f in ((1e-5, 3.0, "1e-5"), (5e-6, 5.0, "5e-6"), (1e-6, 5.0, "1e-6"))},
    default=5e-6,
    reference_only=_AD_REFERENCE_ONLY,
    options=_AD_OPTIONS,
    build=_AD_BUILD,
))

_add(Preset(
    name="alphadecay-llama-adamw",
    paper="He et al., AlphaDecay (NeurIPS 2025): LLaMA-60M / 130M pre-training on C4 with AdamW (decoupled weight "
          "decay 0.1 / 0.05 / 0.01)",
    reference="alphadecay",
    repository=_AD,
    sources=(
        "LLaMa-pretraining/scripts/Adamw/ours/{60M,130M}/WD{1e_1,5e_2,1e_2}.sh:5-19 (adamw, lr 0.001, batch 512, "
        "60M: 10000 steps, warmup 1000; 130M: 20000 steps, warmup 2000; --unbalancedWD_every 500, "
        "--esd_metric_for_tb alpha, --assign_func tb_linear_map, --wd_min_ratio 0.6666, --wd_max_ratio 5)",
        "LLaMa-pretraining/torchrun_main.py:32-45, 361 (torch.optim.AdamW over the groups as built)",
        *_AD_CODE,
    ),
    tempbalance=_AD_ARGS,
    training=dict(data="C4 (en), t5-base tokenizer, max_length 256", optimizer="AdamW (torch; decoupled weight decay)",
                  lr=1e-3, batch_size=512, weight_decay=(0.1, 0.05, 0.01), min_lr_ratio=0.1,
                  schedule="linear warmup from 0 over warmup_steps, then cosine to min_lr_ratio x lr at max_steps, "
                           "stepped per update", dtype="bfloat16"),
    choose_by="model",
    variants={
        "60m": Variant(training=dict(model="LLaMA-60M (configs/llama_60m.json)", max_steps=10000, warmup_steps=1000),
                       source="LLaMa-pretraining/scripts/Adamw/ours/60M/WD1e_1.sh:5-19"),
        "130m": Variant(training=dict(model="LLaMA-130M (configs/llama_130m.json)", max_steps=20000,
                                      warmup_steps=2000),
                        source="LLaMa-pretraining/scripts/Adamw/ours/130M/WD1e_1.sh:5-19"),
    },
    default="130m",
    reference_only=_AD_REFERENCE_ONLY,
    options=_AD_OPTIONS,
    build=_AD_BUILD,
))


def names() -> list[str]:
    """The preset names."""
    return list(PRESETS)


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {names()}")
    return PRESETS[name]


def _variant(p: Preset, choice: dict[str, Any], *, needed: bool) -> Variant | None:
    key = choice.pop(p.choose_by, None) if p.choose_by else None
    if key is None:
        key = p.default
    if key is None:
        if needed:
            raise ValueError(f"preset {p.name!r} needs {p.choose_by}= one of {list(p.variants)} (each value has its own "
                             f"settings in the paper's configs)")
        return None
    for k, v in p.variants.items():
        if k == key or (isinstance(k, float) and isinstance(key, (int, float)) and float(key) == k):
            return v
    raise ValueError(f"preset {p.name!r}: {p.choose_by}={key!r} is not a published configuration; "
                     f"choose one of {list(p.variants)}")


def _tempbalance_params() -> set[str]:
    return set(NAMES)


def get(name: str, **overrides: Any) -> dict[str, Any]:
    """TempBalance keyword arguments of preset ``name``.

    ``overrides``: the preset's choice keyword (``ratio=``, ``reduced_batch=``, ...), ``steps_per_epoch=`` for
    presets whose interval the reference derives from the data loader, and any TempBalance argument, which
    replaces the preset's value. Unknown keywords are an error naming them.
    """
    p = _preset(name)
    rest = dict(overrides)
    needed = any(v.tempbalance for v in p.variants.values())
    variant = _variant(p, rest, needed=needed)
    kwargs, options = dict(p.tempbalance), dict(p.options)
    for k, v in (variant.tempbalance if variant is not None else {}).items():
        (options if k in p.options else kwargs)[k] = v
    given = {k: rest.pop(k) for k in list(rest) if k in p.options}
    options.update(given)
    for arg, make in p.build.items():
        used = [k for k in inspect.signature(make).parameters if k in options]
        if arg in rest:  # replaced by the caller
            if set(used) & set(given):
                raise ValueError(f"preset {p.name!r}: {sorted(set(used) & set(given))} shape the preset's {arg}, and "
                                 f"{arg}= given replaces it: give one")
            continue
        kwargs[arg] = make(**{k: options[k] for k in used})
    steps = rest.pop("steps_per_epoch", None)
    if p.interval_rule == "reference" and "interval" not in rest:
        if steps is None:
            raise ValueError(f"preset {p.name!r}: the reference analyses every min(100, max(1, steps_per_epoch // 10)) "
                             "steps; pass steps_per_epoch=len(train_loader), or interval= to choose your own")
        kwargs["interval"] = compat.reference_interval(steps)
    unknown = sorted(set(rest) - _tempbalance_params())
    if unknown:
        raise ValueError(f"preset {p.name!r}: {unknown} are not TempBalance arguments"
                         + (f" (the preset is chosen by {p.choose_by}=)" if p.choose_by else "")
                         + (f" nor the preset's options {sorted(p.options)}" if p.options else ""))
    kwargs.update(rest)
    return kwargs


def training(name: str, **choice: Any) -> dict[str, Any]:
    """The rest of the published recipe of preset ``name`` (optimizer, lr, batch size, schedule, seeds, ...), for
    the variant picked by the preset's choice keyword."""
    p = _preset(name)
    rest = dict(choice)
    variant = _variant(p, rest, needed=bool(p.variants))
    if rest:
        raise ValueError(f"preset {p.name!r}: unexpected {sorted(rest)}; the choice keyword is {p.choose_by!r}")
    out = dict(p.training)
    if variant is not None:
        out.update(variant.training)
    return out


def describe(name: str) -> str:
    """A readable account of preset ``name``: its paper, reference, sources, values and variants."""
    p = _preset(name)
    lines = [f"{p.name}: {p.paper}", f"  reference code: {p.repository} (compat scheme {p.reference!r})",
             "  sources:"] + [f"    {s}" for s in p.sources]
    lines.append("  TempBalance arguments: " + ", ".join(f"{k}={v!r}" for k, v in p.tempbalance.items()))
    if p.options:
        built = get(p.name, **({p.choose_by: p.default} if p.choose_by and p.default is not None else {}))
        lines.append("  preset options: " + ", ".join(f"{k}={v!r}" for k, v in p.options.items()) + " -> "
                     + ", ".join(f"{k}={getattr(built[k], 'describe', lambda: repr(built[k]))()}" for k in p.build))
    if p.interval_rule == "reference":
        lines.append("  interval: " + compat.SCHEMES[p.reference].interval)
    lines.append("  training: " + "; ".join(f"{k}={v!r}" for k, v in p.training.items()))
    if p.choose_by:
        lines.append(f"  by {p.choose_by}" + (f" (default {p.default!r})" if p.default is not None else "") + ":")
        for k, v in p.variants.items():
            vals = {**v.tempbalance, **v.training}
            lines.append(f"    {k!r}: " + ", ".join(f"{a}={b!r}" for a, b in vals.items()) + f"  [{v.source}]")
    if p.reference_only:
        lines.append("  what the reference does that tempbalance does not reproduce:")
        lines += [f"    - {s}" for s in p.reference_only]
    return "\n".join(lines)
