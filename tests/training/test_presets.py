"""tempbalance.presets: the published configurations, checked against the config rows they were read from (quoted
below as they stand in the reference repositories), and usable as TempBalance arguments."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tempbalance import TempBalance
from tempbalance.training import presets
from test_llr import is_hidden, tiny_llama

# ZihangHLiu/ModelBalancing@9970cea config_files/configs_sigmoid.txt, the first row of each data ratio (lines 3, 6,
# 9, 12, 15, 18): task lr batch_size seed epochs hyperparam tb_unit esd_type schedule_func tb_lr_normalize
# after_warm data_ratio sigmoid_min sigmoid_max fix_fingers
GLUE_ROWS = """
qnli            0.00003         4                13            10                      lr                   block            full             sigmoid          False               False            0.0002                 0.25                   0.25      xmin_mid
qnli            0.00003         8                13            10                      lr                   block            full             sigmoid          False               False            0.0005                 1.25                   1.25      xmin_mid
qnli            0.00003         16                13            10                      lr                   block            full             sigmoid          False               False            0.001                 1.25                   1.25      xmin_mid
qnli            0.00002         16                13            10                      lr                   block            full             sigmoid          False               False            0.005                 1                   1      xmin_mid
qnli            0.00003         16                13            10                      lr                   block            full             sigmoid          False               False            0.01                 1                   1      xmin_mid
qnli            0.00003         32                13            10                      lr                   block            full             sigmoid          False               False            0.05                 2                   1      xmin_mid
"""
# ... sciml/pdebench/txt_files/fno_2dcfd.txt lines 29-34, columns: lr (5), lr_min_ratio (15), lr_slope (16),
# tb_interval_ep (17), eig_thres (18), reduced_batch (22), exp_temp (23)
FNO_ROWS = """
FNO                 20        2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5      700          2.5e-3           12        20            2024,2023,2022               1.e-4             Adam         StepLR       tb_std_sigmoid           xmin_mid        alpha        0.125              0.125               1               12          false          TB_Newfunction              lr              1                  10
FNO                 20        2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5      700          2.5e-3           12        20            2024,2023,2022               1.e-4             Adam         StepLR       tb_std_sigmoid           xmin_mid        alpha        0.5                0.5                 1               12          false          TB_Newfunction              lr              2                  10
FNO                 20        2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5      700          2.5e-3           12        20            2024,2023,2022               1.e-4             Adam         StepLR       tb_std_sigmoid           xmin_mid        alpha        1.0                1.0                 1               12          false          TB_Newfunction              lr              4                  10
FNO                 20        2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5      700          2.5e-3           12        20            2024,2023,2022               1.e-4             Adam         StepLR       tb_std_sigmoid           xmin_mid        alpha        0.25               0.25                1               12          false          TB_Newfunction              lr              10                  10
FNO                 20        2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5      700          2.5e-3           12        20            2024,2023,2022               1.e-4             Adam         StepLR       tb_std_sigmoid           xmin_mid        alpha        0.5                0.5                 1               12          false          TB_Newfunction              lr              40                  10
FNO                 20        2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train.hdf5      700          2.5e-3           12        20            2024,2023,2022               1.e-4             Adam         StepLR       tb_std_sigmoid           xmin_mid        alpha        1.0                1.0                 1               12          false          TB_Newfunction              lr              180                  10
"""
# YefanZhou/TempBalance@9f0d9c7 bash_scripts/config/tb.txt lines 13-16 and 51-52 ("TB" rows)
CIFAR_ROWS = """
resnet             1              18         cifar100            200            cosine         43,37,13,51,71         0.1          0.0005                median        True                True              alpha         tb_linear_map          True             0.5                 1.5                 2                         0                    name                 True               SGD
resnet             1              34        cifar100            200            cosine         43,37,13,51,71        0.1          0.0005                median        True                True              alpha         tb_linear_map          True             0.5                 1.5                 2                         0                      name                 True               SGD
vgg_cifar          1              16         cifar100            200             cosine          43,37,13,51,71        0.05          0.0005                median        True                True              alpha         tb_linear_map          True             0.5                 1.5                 2                         0                    name               True               SGD
vgg_cifar          1              19         cifar100            200             cosine          43,37,13,51,71        0.05          0.0005                median        True                True              alpha         tb_linear_map          True             0.5                 1.5                 2                        0                    name              True               SGD
resnet                    1      18         cifar10             200            cosine         43,37,13,51,71       0.1          0.0005                median       True                True              alpha         tb_linear_map          True             0.5                1.5                 2                          0                    name                 True               SGD
vgg_cifar                 1      16         cifar10             200            cosine         43,37,13,51,71       0.05          0.0005                median       True                True              alpha         tb_linear_map          True             0.5                1.5                 2                          0                    name                 True               SGD
"""
# ZihangHLiu/TempBalance-LM@843878f BTD-Transformer/scripts/txt/ptb_tb.txt lines 2, 7, 12
LM_ROWS = """
0.000125          51              median              True         True                alpha       tb_linear_map           True              1.0              1.0                 2                  200                       1                adam                 3          40000                1               120             stage
0.000125          51              median              True         True                alpha       tb_linear_map           True              1.0              1.0                 2                  200                      10                adam                 3          40000                1               120             stage
0.000125          51              median              True         True                alpha       tb_linear_map           True              1.0              1.0                 2                  200                      25                adam                 3          40000                1               120             stage
"""

# hed-ucas/AlphaDecay@23ce27c LLaMa-pretraining/scripts/: the options of the first run of each file that the presets
# read (Adam/ours/*.sh lines 14 and 17-21; Adamw/ours/*/WD1e_1.sh lines 10-12 and 15-19), one line per file
ALPHADECAY_SCRIPTS = {
    "Adam/ours/1e-5.sh": "--weight_decay 0.00001 --unbalancedWD_every 500 --esd_metric_for_tb alpha "
                         "--assign_func tb_linear_map --wd_min_ratio 0.6666 --wd_max_ratio 3",
    "Adam/ours/5e-6.sh": "--weight_decay 0.000005 --unbalancedWD_every 500 --esd_metric_for_tb alpha "
                         "--assign_func tb_linear_map --wd_min_ratio 0.6666 --wd_max_ratio 5",
    "Adam/ours/1e-6.sh": "--weight_decay 0.000001 --unbalancedWD_every 500 --esd_metric_for_tb alpha "
                         "--assign_func tb_linear_map --wd_min_ratio 0.6666 --wd_max_ratio 5",
    "Adamw/ours/60M/WD1e_1.sh": "--num_training_steps 10000 --warmup_steps 1000 --weight_decay 0.1 "
                                "--unbalancedWD_every 500 --esd_metric_for_tb alpha --assign_func tb_linear_map "
                                "--wd_min_ratio 0.6666 --wd_max_ratio 5",
    "Adamw/ours/130M/WD1e_1.sh": "--num_training_steps 20000 --warmup_steps 2000 --weight_decay 0.1 "
                                 "--unbalancedWD_every 500 --esd_metric_for_tb alpha --assign_func tb_linear_map "
                                 "--wd_min_ratio 0.6666 --wd_max_ratio 5",
}


def _script(text):
    """``--option value ...`` -> {option: value}."""
    words = text.split()
    return {k.lstrip("-"): v for k, v in zip(words[::2], words[1::2])}


def test_alphadecay_presets_are_the_scripts():
    for path, text in ALPHADECAY_SCRIPTS.items():
        row = _script(text)
        assert (row["esd_metric_for_tb"], row["assign_func"]) == ("alpha", "tb_linear_map")
        wd = float(row["weight_decay"])
        if path.startswith("Adam/"):
            name, choice = "alphadecay-llama-adam", dict(weight_decay=wd)
        else:
            name, choice = "alphadecay-llama-adamw", dict(model=path.split("/")[2].lower())
            tr = presets.training(name, **choice)
            assert (tr["max_steps"], tr["warmup_steps"]) == (int(row["num_training_steps"]), int(row["warmup_steps"]))
            assert wd in tr["weight_decay"]
        kw = presets.get(name, **choice)
        policy, cadence = kw["policy"], kw["interval"]
        assert (policy.assign, policy.wd_min_ratio, policy.wd_max_ratio, policy.metric) == (
            row["assign_func"], float(row["wd_min_ratio"]), float(row["wd_max_ratio"]), row["esd_metric_for_tb"])
        assert type(cadence).__name__ == "BeforeEveryN" and cadence.n == int(row["unbalancedWD_every"])
        assert (kw["compat"], kw["unit"], kw["remove_first"], kw["remove_last"], kw["min_eigs"], kw["xmin_pos"]) == (
            "alphadecay", "layer", True, True, 50, 2.0)
        if path.startswith("Adam/"):
            assert presets.training(name, **choice)["weight_decay"] == wd
    assert presets.get("alphadecay-llama-adam")["policy"].wd_max_ratio == 5.0  # default: 5e-6, the 1B row
    a, b = presets.get("alphadecay-llama-adamw"), presets.get("alphadecay-llama-adamw")
    assert a["policy"] is not b["policy"] and a["interval"] is not b["interval"]  # each serves one TempBalance
    assert presets.get("alphadecay-llama-adamw", assign="tb_sqrt", every=7)["policy"].assign == "tb_sqrt"
    assert presets.get("alphadecay-llama-adamw", interval=3)["interval"] == 3  # an explicit argument wins
    assert {n for n in presets.names() if n.startswith("alphadecay")} == {"alphadecay-llama-adam",
                                                                          "alphadecay-llama-adamw"}


def _rows(text):
    return [line.split() for line in text.strip().splitlines()]


def test_glue_preset_is_the_config_rows():
    for row in _rows(GLUE_ROWS):
        lr, bs, ratio, s_lo, s_hi = float(row[1]), int(row[2]), float(row[11]), float(row[12]), float(row[13])
        assert (row[6], row[8], row[9], row[10], row[14]) == ("block", "sigmoid", "False", "False", "xmin_mid")
        kw = presets.get("modelbalancing-glue", ratio=ratio, steps_per_epoch=1000)
        assert (kw["s_lo"], kw["s_hi"], kw["unit"], kw["mapping"]) == (s_lo, s_hi, "block", "sigmoid")
        assert (kw["xmin_pos"], kw["tau"], kw["remove_last"], kw["compat"], kw["interval"]) == (
            1.5, 10.0, True, "modelbalancing", 100)
        tr = presets.training("modelbalancing-glue", ratio=ratio)
        assert (tr["lr"], tr["batch_size"], tr["epochs"], tr["weight_decay"], tr["warmup_ratio"]) == (lr, bs, int(row[4]),
                                                                                                     0.1, 0.06)
    assert sorted({(k["s_lo"], k["s_hi"]) for k in (presets.get("modelbalancing-glue", ratio=r, interval=5)
                                                    for r in (0.0002, 0.0005, 0.001, 0.005, 0.01, 0.05))}) == [
        (0.25, 0.25), (1.0, 1.0), (1.25, 1.25), (2.0, 1.0)]


def test_fno_preset_is_the_config_rows():
    for row in _rows(FNO_ROWS):
        kw = presets.get("modelbalancing-fno-cfd", reduced_batch=int(row[21]))
        assert (kw["s_lo"], kw["s_hi"], kw["tau"]) == (float(row[14]), float(row[15]), float(row[22]))
        assert (row[11], row[16], kw["interval"], kw["unit"], kw["min_eigs"]) == ("tb_std_sigmoid", "1", None, "layer",
                                                                                  int(row[17]))
        assert (kw["filter_zeros"], kw["compat"]) == (True, "modelbalancing_fno")
        assert presets.training("modelbalancing-fno-cfd", reduced_batch=int(row[21]))["lr"] == float(row[4])


def test_cifar_preset_is_the_config_rows():
    names = {("resnet", "18"): "resnet18", ("resnet", "34"): "resnet34", ("vgg_cifar", "16"): "vgg16",
             ("vgg_cifar", "19"): "vgg19"}
    kw = presets.get("tempbalance-cifar")
    for row in _rows(CIFAR_ROWS):
        key = f"{row[3]}-{names[(row[0], row[2])]}"
        tr = presets.training("tempbalance-cifar", model=key)
        assert (tr["lr"], tr["weight_decay"], tr["epochs"]) == (float(row[7]), float(row[8]), int(row[4]))
        assert (kw["remove_first"], kw["remove_last"], kw["s1"], kw["s2"], kw["xmin_pos"]) == (
            row[10] == "True", row[11] == "True", float(row[15]), float(row[16]), float(row[17]))
        assert (row[13], row[19], row[20], kw["mapping"], kw["unit"]) == ("tb_linear_map", "name", "True", "linear",
                                                                         "layer")


def test_lm_preset_is_the_config_rows():
    for row in _rows(LM_ROWS):
        kw = presets.get("tempbalance-lm-ptb", esd_interval=int(row[12]))
        assert (kw["s1"], kw["s2"]) == (float(row[8]), float(row[8]) + float(row[9]))
        assert (kw["interval"], kw["remove_last"], kw["xmin_pos"]) == (int(row[12]), row[4] == "True", float(row[10]))
    assert presets.get("tempbalance-lm-ptb")["interval"] == 1  # run_ptb_tb.sh runs rows 2-6


def test_presets_build_a_tempbalance(minilm):
    """Every preset's arguments are accepted by TempBalance (on MiniLM, or a small CNN for the per-layer ones)."""
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.LazyLinear(4))
    cnn(torch.zeros(1, 3, 9, 9))
    choices = {"modelbalancing-glue": dict(ratio=0.05, steps_per_epoch=300), "modelbalancing-fno-cfd":
               dict(reduced_batch=180), "tempbalance-cifar": {}, "tempbalance-lm-ptb": {},
               "alphadecay-llama-adam": dict(weight_decay=1e-5), "alphadecay-llama-adamw": {}, "llr-adamw-1b-20b": {},
               "llr-adamw-1b-100b": {}, "llr-muon-1b-20b": {}}
    assert set(choices) == set(presets.names())
    llama = tiny_llama()
    for name, choice in choices.items():
        model = minilm if name == "modelbalancing-glue" else llama if name.startswith("llr") else cnn
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if name.startswith("llr-muon"):
            hidden = [p for n, p in model.named_parameters() if is_hidden(n, p)]
            opt = [torch.optim.Muon(hidden, lr=0.02),
                   torch.optim.AdamW([p for p in model.parameters() if all(p is not h for h in hidden)], lr=1e-3)]
        tb = TempBalance(model, opt, **presets.get(name, **choice))
        assert tb.unit == presets.get(name, **choice)["unit"]
        assert name in presets.describe(name) and presets.PRESETS[name].repository in presets.describe(name)


def test_overrides_and_errors():
    kw = presets.get("modelbalancing-glue", ratio=0.0002, steps_per_epoch=57, s_lo=2.0, lag=1)
    assert (kw["s_lo"], kw["s_hi"], kw["interval"], kw["lag"]) == (2.0, 0.25, 5, 1)
    assert presets.get("modelbalancing-glue", ratio=0.0002, interval=7)["interval"] == 7
    with pytest.raises(ValueError, match="ratio= one of"):
        presets.get("modelbalancing-glue", steps_per_epoch=10)
    with pytest.raises(ValueError, match="ratio=0.003 is not a published"):
        presets.get("modelbalancing-glue", ratio=0.003, steps_per_epoch=10)
    with pytest.raises(ValueError, match="steps_per_epoch=len"):
        presets.get("modelbalancing-glue", ratio=0.05)
    with pytest.raises(ValueError, match=r"\['sigma'\] are not TempBalance arguments"):
        presets.get("tempbalance-cifar", sigma=1.0)
    with pytest.raises(ValueError, match="unknown preset 'glue'"):
        presets.get("glue")
    with pytest.raises(ValueError, match="model= one of"):
        presets.training("tempbalance-cifar")
    with pytest.raises(ValueError, match="unexpected"):
        presets.training("tempbalance-cifar", model="cifar10-vgg16", lr=1.0)
