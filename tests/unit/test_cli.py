from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import build_parser, duration, main

COMMANDS = ("simulate", "train", "inspect", "sign", "serve", "notify", "evaluate", "bench")


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


def test_hyper_values_are_typed() -> None:
    from monitor.cli import _parse_hyper

    assert _parse_hyper(["n_components=4", "per_step=false", "beta=0.5", "hidden=64,16"]) == {
        "n_components": 4,
        "per_step": False,
        "beta": 0.5,
        "hidden": (64, 16),
    }
    from monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_hyper(["oops"])


def test_train_pca_baseline_with_pot_threshold_and_bias_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import sine_frame

    data = tmp_path / "normal.csv"
    sine_frame(6000).to_csv(data, index=False)
    out = tmp_path / "bundle"
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--model",
            "pca",
            "--window",
            "16",
            "--threshold-rule",
            "pot",
            "--hyper",
            "n_components=2",
            "--bias-factor",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert main(["inspect", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert '"family": "pca"' in text
    assert '"rule": "pot"' in text
    assert '"bias_factor": 2.0' in text


def test_threshold_calibration_failure_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import sine_frame

    data = tmp_path / "short.csv"
    sine_frame(600).to_csv(data, index=False)
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "b"),
            "--model",
            "pca",
            "--window",
            "16",
            "--threshold-rule",
            "pot",
            "--no-progress",
        ]
    )
    assert rc == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("plantwatch train: error:")]
    assert len(errors) == 1, stderr
    assert "cannot calibrate the threshold" in errors[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--protocol", "skab"],
        ["--protocol", "generic", "--bundle", "some/bundle"],
    ],
)
def test_evaluate_asset_groups_misuse_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    args = ["evaluate", "--data", str(tmp_path), "--asset-groups", "pump-*,compressor-*", *extra]
    assert main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "plantwatch evaluate: error: --asset-groups is for the generic protocol, without --bundle"
    )


def test_train_offers_every_model_family() -> None:
    """``train --model``'s choices are spelled out in the CLI (it must not import torch); they
    are the families the trainer builds."""
    from training.models import FAMILIES

    parser = build_parser()
    train = parser.parse_args(["train", "--data", "d", "--out", "o"])
    assert train.model == "dense"
    for family in FAMILIES:
        assert parser.parse_args(["train", "--data", "d", "--out", "o", "--model", family])
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--model", "transformer"])


def test_train_and_evaluate_share_the_model_options() -> None:
    """What ``train`` can train, ``evaluate`` can evaluate: both parse the same options."""
    parser = build_parser()
    options = [
        "--noise-std", "0.1", "--mask-fraction", "0.25", "--mask-unit", "sensor",
        "--sensor-weighting", "balanced", "--modes", "2", "--bias-factor", "1.5",
        "--hyper", "shrinkage=0.2",
    ]  # fmt: skip
    train = parser.parse_args(["train", "--data", "d", "--out", "o", *options])
    evaluate = parser.parse_args(["evaluate", "--protocol", "generic", "--data", "d", *options])
    names = ("noise_std", "mask_fraction", "mask_unit", "sensor_weighting", "modes", "bias_factor")
    for args in (train, evaluate):
        assert tuple(getattr(args, name) for name in names) == (
            0.1,
            0.25,
            "sensor",
            "balanced",
            2,
            1.5,
        )
        assert args.hyper == ["shrinkage=0.2"]


def test_denoising_options_on_pca_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PCA is fitted in closed form: a noise or mask option would be silently ignored (and the
    manifest would still record it), so it is refused before any data is read."""
    for option in (["--noise-std", "0.1"], ["--mask-fraction", "0.25"]):
        paths = ["--data", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "b")]
        rc = main(["train", *paths, "--model", "pca", *option, "--no-progress"])
        assert rc == 2
        stderr = capsys.readouterr().err
        errors = [line for line in stderr.splitlines() if line.startswith("plantwatch train:")]
        assert len(errors) == 1, stderr
        assert "--model pca is fitted in closed form" in errors[0]


def test_a_stuck_shutdown_names_what_it_waits_for() -> None:
    """At the shutdown deadline, serve logs where each task still waits, await by await."""
    import asyncio

    from monitor.cli import awaiting

    async def fetch(ready: asyncio.Event) -> None:
        await ready.wait()

    async def run(ready: asyncio.Event) -> None:
        await fetch(ready)

    async def main() -> str:
        ready = asyncio.Event()
        task = asyncio.create_task(run(ready), name="consume-loop")
        await asyncio.sleep(0)
        where = awaiting(task)
        ready.set()
        await task
        return where

    where = asyncio.run(main())
    assert where.startswith("consume-loop: test_cli.py:")
    assert [step.rsplit(" ", 1)[1] for step in where.split(": ", 1)[1].split(" > ")] == [
        "run",
        "fetch",
        "wait",
    ]
