from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import build_parser, duration, main

COMMANDS = ("simulate", "train", "inspect")


def test_help_explains_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    top = capsys.readouterr().out
    for command in COMMANDS:
        assert command in top
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert f"usage: plantwatch {command}" in text
        assert len(text.splitlines()) > 3


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("plantwatch")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith("plantwatch ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("6h", 21600.0), ("2d", 172800.0)],
)
def test_duration(text: str, seconds: float) -> None:
    assert duration(text) == seconds


def test_inspect_missing_bundle_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"plantwatch inspect: error: {tmp_path / 'nope'}: not a model bundle (no manifest.json)"
    ]


def test_inspect_prints_manifest(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out
    assert "tiny" in out
    assert main(["inspect", "--json", str(tiny_bundle)]) == 0
    assert '"schema_version": 1' in capsys.readouterr().out


def test_train_bad_column_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.csv"
    data.write_text("timestamp,asset,a\n" + "".join(f"{i},x,{i % 7}\n" for i in range(200)))
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--columns", "a,zz"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "zz" in err[0]
    assert "d.csv" in err[0]


def test_parser_rejects_unknown_model() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "x", "--out", "y", "--model", "gan"])
