"""The command line: `tempbalance analyze [PATH]` on state_dict files, HF folders and the shipped MiniLM."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tempbalance import _native
from tempbalance.cli import build_parser, main


@pytest.fixture
def state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 80), nn.LayerNorm(80))
    return model.state_dict()


def test_analyze_pt_file_with_exports(tmp_path, state_dict, capsys):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": state_dict, "epoch": 3}, path)  # a checkpoint wrapper is unwrapped
    csv, js = tmp_path / "out.csv", tmp_path / "out.json"
    code = main(["analyze", str(path), "--plain", "--backend", "torch", "--csv", str(csv), "--json", str(js)])
    out = capsys.readouterr().out
    assert code == 0
    assert "0.weight" in out and "2.weight" in out and "2 of 2 layers fitted" in out
    assert len(csv.read_text().strip().splitlines()) == 3
    data = json.loads(js.read_text())
    assert [r["name"] for r in data["rows"]] == ["0.weight", "2.weight"]
    assert data["settings"]["backend"] == "torch"


def test_analyze_safetensors_with_options(tmp_path, state_dict, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(state_dict, str(path))
    code = main(["analyze", str(path), "--plain", "--backend", "torch", "--min-eigs", "70", "--xmin-pos", "1.5",
                 "--dtype", "float64", "--xmin-rule", "fit"])
    out = capsys.readouterr().out
    assert code == 0
    assert "too_few_eigs" in out  # 64 eigenvalues < 70
    assert "1 of 2 layers fitted" in out


def test_analyze_hf_folder_rich_table(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=32)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    code = main(["analyze", str(tmp_path / "bert"), "--backend", "torch"])
    out = capsys.readouterr().out
    assert code == 0
    assert "encoder.layer.0.attention.self.query" in out and "layers fitted" in out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["analyze", "/no/such/path"], "no such file"),
        (["analyze", "{tmp}"], "config.json"),
        (["analyze", "{tmp}/notes.txt"], "state_dict file"),
        (["analyze", "{tmp}/sd.pt", "--xmin-pos", "0.5"], "xmin_pos"),
        (["analyze", "{tmp}/garbage.pt"], "cannot read"),
    ],
)
def test_errors_are_one_line_exit_1(tmp_path, state_dict, capsys, argv, match):
    torch.save(state_dict, tmp_path / "sd.pt")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 1
    assert match in err and "Traceback" not in err


@pytest.mark.skipif(_native.core is not None, reason="only meaningful without the native core")
def test_native_backend_unavailable_is_reported(tmp_path, state_dict, capsys):
    torch.save(state_dict, tmp_path / "sd.pt")
    assert main(["analyze", str(tmp_path / "sd.pt"), "--backend", "native"]) == 1
    assert "native core is unavailable" in capsys.readouterr().err


def test_parser_has_subcommands():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a subcommand is required
    args = parser.parse_args(["analyze"])
    assert args.path is None and args.xmin_pos == 2.0 and args.backend == "auto"


def test_python_m_on_the_default_minilm(minilm_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    js = tmp_path / "minilm.json"
    proc = subprocess.run([sys.executable, "-m", "tempbalance", "analyze", "--plain", "--json", str(js)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "encoder.layer.5.output.dense" in proc.stdout and "37 of 37 layers fitted" in proc.stdout
    assert len(json.loads(js.read_text())["rows"]) == 37


# --- analyze --plot -------------------------------------------------------------------------------------------------
def test_analyze_plot_writes_alpha_bars_and_one_esd_per_layer(tmp_path, state_dict, capsys):
    from matplotlib import image as mpimg

    state_dict["2.weight"][0, 0] = float("nan")  # a failed layer is plotted too, not a crash
    torch.save(state_dict, tmp_path / "sd.pt")
    out = tmp_path / "plots"
    code = main(["analyze", str(tmp_path / "sd.pt"), "--plain", "--backend", "torch", "--plot", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "alpha_blocks.png", "alpha_layers.png", "esd/000_0.weight.png", "esd/001_2.weight.png"]
    for p in out.rglob("*.png"):
        img = mpimg.imread(str(p))
        assert img.shape[0] > 200 and img.shape[1] > 300
    assert f"plots: {out / 'alpha_layers.png'}" in stdout and "2 ESD plots" in stdout


def test_analyze_plot_layers_selects_the_esd_plots(tmp_path, state_dict, capsys):
    torch.save(state_dict, tmp_path / "sd.pt")
    out = tmp_path / "p"
    code = main(["analyze", str(tmp_path / "sd.pt"), "--plain", "--backend", "torch", "--plot", str(out),
                 "--plot-layers", r"^2\."])
    assert code == 0
    assert [p.name for p in (out / "esd").iterdir()] == ["001_2.weight.png"]
    assert "1 ESD plot in" in capsys.readouterr().out


@pytest.mark.parametrize("extra, match", [
    (["--plot", "{tmp}/p", "--plot-layers", "("], "not a valid regular expression"),
    (["--plot-layers", "0"], "--plot-layers needs --plot"),
    (["--plot", "{tmp}/p", "--plot-layers", "nothing"], "no layer of the report matches"),
])
def test_analyze_plot_errors(tmp_path, state_dict, capsys, extra, match):
    torch.save(state_dict, tmp_path / "sd.pt")
    argv = ["analyze", str(tmp_path / "sd.pt"), "--plain", "--backend", "torch"] + extra
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


# --- bad files and output paths fail in one line, before the work (case 13) ----------------------------------------
@pytest.mark.parametrize("content", [b"", b"\x00\x01 not safetensors at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{"])
def test_corrupt_or_empty_safetensors_is_a_one_line_error(tmp_path, capsys, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    code = main(["analyze", str(path), "--plain"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot read" in err and "safetensors" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--csv", "--json"])
def test_output_into_a_missing_folder_fails_before_the_analysis(tmp_path, state_dict, capsys, monkeypatch, option):
    import tempbalance.model_analysis as A

    torch.save(state_dict, tmp_path / "sd.pt")
    calls = []
    monkeypatch.setattr(A, "analyze_specs", lambda *a, **k: calls.append(1))
    code = main(["analyze", str(tmp_path / "sd.pt"), "--plain", option, str(tmp_path / "no" / "out.txt")])
    err = capsys.readouterr().err
    assert code == 1 and f"{option} " in err and "does not exist" in err and calls == []


def test_a_checkpoint_with_weights_under_an_unknown_key_exits_non_zero(tmp_path, state_dict, capsys):
    path = tmp_path / "ckpt.pt"
    torch.save({"ema_weights": state_dict, "step": 100}, path)
    code = main(["analyze", str(path), "--plain"])
    err = capsys.readouterr().err
    assert code == 1 and "nothing analysed" in err and "'ema_weights'" in err and "'step'" in err
