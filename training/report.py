"""The training report written beside a bundle: loss curves, score histogram, summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: plant servers and CI have no display

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from monitor.bundle import Manifest


def write_report(
    directory: Path,
    manifest: Manifest,
    *,
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    best_epoch: int,
    val_scores: npt.NDArray[np.floating],
) -> list[Path]:
    """Write ``loss.png``, ``validation_scores.png`` and ``summary.md``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    loss_png = directory / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(train_loss) + 1)
    ax.plot(epochs, train_loss, label="train")
    ax.plot(epochs, val_loss, label="validation")
    ax.axvline(best_epoch + 1, color="grey", linestyle=":", label=f"best (epoch {best_epoch + 1})")
    ax.set(xlabel="epoch", ylabel="MSE (normalised units)", yscale="log", title="Training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(loss_png, dpi=100)
    plt.close(fig)

    hist_png = directory / "validation_scores.png"
    threshold = manifest.threshold.value
    fig, ax = plt.subplots(figsize=(7, 4))
    upper = max(float(np.max(val_scores)), threshold) * 1.1
    bins = np.linspace(0.0, upper, 80).tolist()
    ax.hist(val_scores, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="tab:red", label=f"threshold {threshold:.4g}")
    ax.set(
        xlabel="window score",
        ylabel="validation windows",
        yscale="log",
        title=f"Held-out normal windows ({len(val_scores)})",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(hist_png, dpi=100)
    plt.close(fig)

    v = manifest.validation
    summary = directory / "summary.md"
    summary.write_text(
        "\n".join(
            [
                f"# Training report: {manifest.model.name} {manifest.model.version}",
                "",
                f"- model family: {manifest.model.family} ({manifest.model.hyperparameters})",
                f"- features ({manifest.n_features}): {', '.join(manifest.features)}",
                f"- window: {manifest.window.length} readings at "
                f"{manifest.sampling_interval_s:g} s, training stride {manifest.window.stride}",
                f"- training data: {manifest.training_data.rows} rows, "
                f"{manifest.training_data.start} .. {manifest.training_data.end}",
                f"- epochs: {len(train_loss)}, best {best_epoch + 1}, "
                f"validation loss {min(val_loss):.5f}",
                f"- threshold: {threshold:.6g} ({manifest.threshold.rule} "
                f"{manifest.threshold.params})",
                f"- validation windows: {v.n_windows}, mean score {v.mean:.4g}, "
                f"max {v.max:.4g}, share at or above threshold {v.above_threshold:.2%}",
                f"- ONNX parity (max abs diff vs torch): {manifest.onnx.parity_max_abs_diff:.2e}",
                "",
                "![loss](loss.png)",
                "",
                "![validation scores](validation_scores.png)",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return [loss_png, hist_png, summary]
