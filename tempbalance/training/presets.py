"""The papers' published TempBalance configurations, as data you can read and override.

    kwargs = tempbalance.presets.get("modelbalancing-glue", ratio=0.0002, steps_per_epoch=len(train_loader))
    tb = tempbalance.TempBalance(model, optimizer, base_scheduler=sched, **kwargs)
    tempbalance.presets.training("modelbalancing-glue", ratio=0.0002)   # lr, batch size, epochs, ... of that run
    print(tempbalance.presets.describe("modelbalancing-glue"))          # everything, with its sources

Every value names the script and config line it was read from (repository at a fixed commit). ``get`` returns
:class:`~tempbalance.TempBalance` keyword arguments; any of them can be overridden (``get(name, s_lo=1.0)``).
``training`` returns the rest of the published recipe (optimizer, learning rate, batch size, schedule, ...), which
TempBalance does not set. Some presets take options of their own - a method's numbers, overridable in ``get`` like
the arguments - from which every ``get`` builds a fresh policy and cadence (they keep state of their own): the
AlphaDecay presets' ``assign=``, ``wd_min_ratio=``, ``wd_max_ratio=``, ``sigmoid_alpha=`` make the ``policy``,
``every=`` the ``interval``; LLR's ``lr_min_ratio=``, ``lr_max_ratio=``, ``linear_steps=``, ``edge_factor=``,
``max_steps=``, ``llr_ratio=`` the ``policy`` and ``every=`` (with the last two) the ``interval``. ``reference`` names
the scheme of :mod:`tempbalance.compat` the preset reproduces (its ``compat=`` argument); ``reference_only`` lists
what that code does that TempBalance does not reproduce.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import compat
from .alphadecay import AlphaDecay
from .arguments import NAMES
from .cadence import BeforeEveryN
from .llr import LLR, LLRCadence

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
    options: Mapping[str, Any] = field(default_factory=dict)


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

_LLR = "hed-ucas/Layer-wise-Learning-Rate@bbd0dcf86af80b8843866a9a041086a37de35897"


def _llr_until(max_steps: int, llr_ratio: float) -> int:
    """The last update LLR refreshes at: "global_step <= stop_at * LLR_ratio" (train.py:1070-1084)."""
    for key, v in (("max_steps", max_steps),):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"LLR preset option {key} must be an integer >= 1, got {v!r}")
    if isinstance(llr_ratio, bool) or not isinstance(llr_ratio, (int, float)) or not 0 < llr_ratio:
        raise ValueError(f"LLR preset option llr_ratio must be a number > 0, got {llr_ratio!r}")
    return max(1, math.floor(max_steps * llr_ratio))


def _llr_policy(lr_min_ratio: float, lr_max_ratio: float, linear_steps: int, edge_factor: float | None,
                max_steps: int, llr_ratio: float) -> LLR:
    """LLR's policy from a preset's options: the map between the ratios, transitions of ``linear_steps``."""
    if isinstance(linear_steps, bool) or not isinstance(linear_steps, int) or linear_steps < 1:
        raise ValueError(f"LLR preset option linear_steps must be an integer >= 1, got {linear_steps!r}")
    return LLR(lr_min_ratio=lr_min_ratio, lr_max_ratio=lr_max_ratio, linear_steps=linear_steps,
               edge_factor=edge_factor, until=_llr_until(max_steps, llr_ratio))


def _llr_interval(every: int, max_steps: int, llr_ratio: float) -> LLRCadence:
    """LLR's cadence: a refresh at update 1 and every ``every``-th update up to :func:`_llr_until`."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"LLR preset option every must be an integer >= 1, got {every!r}")
    return LLRCadence(every, until=_llr_until(max_steps, llr_ratio))


_LLR_ARGUMENTS = dict(compat="llr", unit="layer", xmin_pos=2.0, xmin_rule="median", min_eigs=50, filter_zeros=False,
                      remove_first=False, remove_last=False)
_LLR_ONLY = (
    "the gradient-alpha phase (num_grad_steps > 0: alphas of the gradients, then of the weights); every published "
    "run sets num_grad_steps 0",
    "the embedding and head take the largest alpha of every listed layer before the removals and the 50-eigenvalue "
    "threshold (LRUnbalance.py:174), so a dropped layer could widen the map's range; here the tuned ones' largest "
    "(the same when no layer is dropped, as in every LLaMA)",
    "with optimizer.embed_lr > 0 under AdamW the first and last listed rows get it (LRUnbalance.py:192-194), "
    "whichever layers they are after remove_first / remove_last; here the embedding and head (edge_factor)",
    "a BatchNorm2d that follows a conv gets its own group but no row, so the target list shifts onto the next groups "
    "(LRUnbalance.py:338-344); here it takes its conv's target (no LLaMA has one)",
    "a restarted run re-analyses at its first step and rebuilds the base scheduler (train.py:1072-1124, "
    "continue_training); a resumed TempBalance continues the uninterrupted run exactly",
    "float32 svdvals on the GPU; tempbalance's Gram eigenvalues (float64 on request)",
)
_LLR_SOURCES = (
    "olmo/LRUnbalance.py:172-204 (the listed layers, embedding/head rules), :264-361 (targets, transitions), "
    ":474-599 (median fit, xmin_pos), :56 (eigs_thresh 50), :610-634 (tb_linear_map)",
    "olmo/train.py:1063-1141 (refresh at update 1 and every unbalancedlr_every-th while global_step <= stop_at * "
    "LLR_ratio; the flag that ends a transition; the scheduler stepped before the update)",
    "galore_utils/training_utils.py:56-131 (linear_to_target), :206-221 (cosine_with_warmup)",
    "olmo/optim.py:1005-1059 (build_optimizer_LLR: AdamW(groups, weight_decay) - torch's betas and eps)",
)
_LLAMA_1B = "LLaMA-1B (hidden 2048, FFN 5461, 24 layers, 32 heads, vocab 32128, sequence 1024), FineWeb"


def _llr_preset(name: str, paper: str, sources: tuple[str, ...], config: str, stop_at: int, warmup: int,
                **more: Any) -> Preset:
    """An LLR preset: the reference's arguments, the run scripts' options (``every`` 100, ``linear_steps`` 50,
    ratios 1 - 5, the yaml's ``stop_at`` and ``LLR_ratio`` 0.2), its policy and cadence built by
    :func:`_llr_policy` and :func:`_llr_interval`."""
    lines = f"{config}:13-22, 25-40, 49-62, 105"
    fields: dict[str, Any] = dict(
        name=name, paper=paper, reference="llr", repository=_LLR, sources=(*sources, *_LLR_SOURCES),
        tempbalance=_LLR_ARGUMENTS, build=dict(policy=_llr_policy, interval=_llr_interval), reference_only=_LLR_ONLY,
        options=dict(lr_min_ratio=1.0, lr_max_ratio=5.0, linear_steps=50, every=100, max_steps=stop_at,
                     llr_ratio=0.2, edge_factor=None),
        training=dict(model=_LLAMA_1B, config=f"configs/llama_1024/{config}",
                      optimizer="AdamW(param groups, weight_decay=0.1, fused=True): torch's betas (0.9, 0.999) and "
                                "eps 1e-8 (the config's betas are not passed, olmo/optim.py:1043)",
                      lr=5e-4, weight_decay=0.1, batch_size=512, sequence_length=1024, max_grad_norm=1.0,
                      precision="amp_bf16",
                      schedule=f"cosine_with_warmup (galore_utils/training_utils.py:206-221): warmup {warmup}, "
                               f"cycle {stop_at}, min ratio 0.1; stepped before each update, so update t runs at "
                               "f(t): give TempBalance LambdaLR(opt, lambda k: f(k + 1))",
                      max_steps=stop_at, lines=lines))
    training = more.pop("training", {})
    fields["training"] = {**fields["training"], **training}
    fields["reference_only"] = fields["reference_only"] + more.pop("reference_only", ())
    return Preset(**fields, **more)


_PAPER = "He et al., One LR Doesn't Fit All: Heavy-Tail Guided Layerwise Learning Rates for LLMs (ICML 2026, arXiv " \
         "2605.22297): LLaMA-1B pretraining"
_add(_llr_preset(
    "llr-adamw-1b-20b", f"{_PAPER} on 20B FineWeb tokens with AdamW",
    ("run_scripts/hed_scripts_1B_20B/LLR.sh:6-18 (llama-1B-t5.yaml, adamw, learning_rate 0.0005, "
     "alpha_positively_with_lr True, unbalancedlr_every 100, num_grad_steps 0, assign_func tb_linear_map, "
     "lr_min_ratio 1, lr_max_ratio 5, linear_steps 50); LLR_new1.sh:16-18 (1 - 4); LLR_new2.sh:8-19 (LLR_ratio "
     "1.0, 1 - 3)",
     "configs/llama_1024/llama-1B-t5.yaml:13-22 (stop_at 40000, LLR_ratio 0.2, cosine_with_warmup 4000, alpha_f "
     "0.1), :49-62 (embed_name embed, head_name head, embed_lr -1, weight_decay 0.1), :65-84 (pl_fitting "
     "median, remove_first/last False, filter_zeros False, xmin_pos 2)"),
    "llama-1B-t5.yaml", 40000, 4000,
    choose_by="lr_max_ratio",
    variants={5.0: Variant(options=dict(lr_max_ratio=5.0), source="run_scripts/hed_scripts_1B_20B/LLR.sh:16-17"),
              4.0: Variant(options=dict(lr_max_ratio=4.0), source="run_scripts/hed_scripts_1B_20B/LLR_new1.sh:16-17"),
              3.0: Variant(options=dict(lr_max_ratio=3.0, llr_ratio=1.0),
                           source="run_scripts/hed_scripts_1B_20B/LLR_new2.sh:8, 17-18")},
    default=5.0,
))

_add(_llr_preset(
    "llr-adamw-1b-100b", f"{_PAPER} on 100B FineWeb tokens with AdamW (the README's usage)",
    ("run_scripts/hed_scripts_1B_100B/LLR.sh:6-18 (llama-1B-t5-100B.yaml, adamw, learning_rate 0.0005, "
     "unbalancedlr_every 100, lr_min_ratio 1, lr_max_ratio 5, linear_steps 50); README.md:136-156 (the same command)",
     "configs/llama_1024/llama-1B-t5-100B.yaml:13-22 (stop_at 200000, LLR_ratio 0.2, cosine_with_warmup 20000, "
     "alpha_f 0.1), :49-62, :65-84"),
    "llama-1B-t5-100B.yaml", 200000, 20000,
))

_add(_llr_preset(
    "llr-muon-1b-20b", f"{_PAPER} with Muon (hidden matrices) + AdamW (embedding, head, norms) - reconstructed: the "
                       "repository publishes no Muon run",
    ("olmo/LRUnbalance.py:198-204 (under Muon the embedding and head get embed_lr, or learning_rate x "
     "lr_max_ratio), :216-217 (their groups start at learning_rate), olmo/optim.py:1029-1032 and olmo/train.py:"
     "1065-1066 (the layers' base is muon_lr)",
     "the LLR values of run_scripts/hed_scripts_1B_20B/LLR.sh:8-18 and configs/llama_1024/llama-1B-t5.yaml:13-22, "
     "49-84, as llr-adamw-1b-20b"),
    "llama-1B-t5.yaml", 40000, 4000,
    training=dict(optimizer="[torch.optim.Muon(hidden matrices, lr=muon_lr), torch.optim.AdamW(embedding, head, "
                            "norms, lr=learning_rate)]: the reference's one optimizer split in two",
                  muon_lr="not published: llama_1024/*.yaml:54 set -1, configs/tiny/OLMo-*.yaml:58 6.0e-3 (OLMo "
                          "models), olmo/config.py:596 defaults to 1.0e-3"),
    reference_only=(
        "the reference cannot run Muon at this commit: build_optimizer_LLR has no Muon branch (olmo/optim.py:"
        "1040-1051) and LRUnbalance.py:199 reads args.embed_lr, which TrainConfig lacks; its rules are followed as "
        "written, with optimizer.embed_lr for LRUnbalance.py:199",
        "the parameters no listed layer owns (norms) take AdamW's learning rate in the reference's one optimizer; "
        "here they must be in the AdamW optimizer to get it (a Muon group's base is muon_lr)",
    ),
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
    variants={wd: Variant(options=dict(wd_max_ratio=hi), training=dict(weight_decay=wd),
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
    needed = any(v.tempbalance or v.options for v in p.variants.values())
    variant = _variant(p, rest, needed=needed)
    kwargs, options = dict(p.tempbalance), dict(p.options)
    if variant is not None:
        kwargs.update(variant.tempbalance)
        options.update(variant.options)
    given = {k: rest.pop(k) for k in list(rest) if k in p.options}
    options.update(given)
    shaping: set[str] = set()  # the given options some built argument takes
    for arg, make in p.build.items():
        used = [k for k in inspect.signature(make).parameters if k in options]
        if arg not in rest:  # else replaced by the caller
            shaping.update(used)
            kwargs[arg] = make(**{k: options[k] for k in used})
    for arg, make in p.build.items():  # an option given only for an argument the caller replaces would do nothing
        idle = sorted(set(given) & set(inspect.signature(make).parameters) - shaping) if arg in rest else []
        if idle:
            raise ValueError(f"preset {p.name!r}: {idle} shape the preset's {arg}, and {arg}= given replaces it: "
                             "give one")
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
            vals = {**v.tempbalance, **v.options, **v.training}
            lines.append(f"    {k!r}: " + ", ".join(f"{a}={b!r}" for a, b in vals.items()) + f"  [{v.source}]")
    if p.reference_only:
        lines.append("  what the reference does that tempbalance does not reproduce:")
        lines += [f"    - {s}" for s in p.reference_only]
    return "\n".join(lines)
