"""Figures: the paper's PNIL maps (Figures 1, 3), accuracy curves (Figures 4, 5) and per-epoch training curves.

matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from keras_pnil.files import atomic_write_bytes
from keras_pnil.history import read_history


def _figure():
    # A local import: matplotlib is slow to import and needed only for figures; Agg draws without a screen.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def plot_pnil_maps(layer, image, path, title: str = "") -> Path:
    """The paper's Figures 1 and 3: input, learned B and W, Σ for the input, and the noisy output.

    Multi-channel inputs get one row per channel.

    Example:
        >>> plot_pnil_maps(model.get_layer("pnil"), x_test[0], "fig1_pnil.png", title="NFGSM + PNIL")
        PosixPath('fig1_pnil.png')
    """
    plt = _figure()
    image = np.asarray(image, np.float32)[None]
    maps = {"input X": image[0], "bias B": layer.bias.numpy(), "weight W": layer.kernel.numpy(),
            "Σ = X⊙W + B": layer.log_variance(image).numpy()[0], "output X'": layer(image).numpy()[0]}
    channels = image.shape[-1]
    fig, axes = plt.subplots(channels, len(maps), figsize=(3 * len(maps), 3 * channels), squeeze=False)
    for c in range(channels):
        for ax, (name, value) in zip(axes[c], maps.items(), strict=True):
            shown = ax.imshow(value[..., c], cmap="gray" if "X" in name.split()[-1] else "viridis")
            ax.set_title(name if channels == 1 else f"{name} [ch {c}]")
            ax.axis("off")
            fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.suptitle(title)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_curve(x, series: dict, path, xlabel: str, title: str, log_x: bool = False) -> Path:
    """Accuracy curves: EOT samples (Figure 4) or ε (Figure 5) on the x axis.

    Example:
        >>> plot_curve([1, 10, 100], {"PNIL": [0.9, 0.7, 0.65]}, "fig4_eot.png", "EOT samples", "MNIST", log_x=True)
        PosixPath('fig4_eot.png')
    """
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, ys in series.items():
        ax.plot(x, np.asarray(ys) * 100, marker="o", label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PGD accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_training_curves(histories: dict, path, title: str) -> Path:
    """Per-epoch clean and PGD accuracy of several runs; PGD without EOT dashed (PNIL runs).

    Example:
        >>> plot_training_curves({"NFGSM": "runs/a/history.csv", "NFGSM + PNIL": "runs/b/history.csv"},
        ...                      "training_mnist.png", "MNIST")
        PosixPath('training_mnist.png')
    """
    plt = _figure()
    fig, (clean_ax, pgd_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (label, history_path) in enumerate(histories.items()):
        # tab20: distinct colours for up to 20 runs (the default cycle repeats after 10).
        history, color = read_history(history_path), plt.get_cmap("tab20")(i % 20)
        epochs = range(1, len(history.get("pgd_val_accuracy", [])) + 1)
        clean_ax.plot(epochs, np.asarray(history.get("val_clean_accuracy", [np.nan] * len(epochs))) * 100,
                      marker="o", color=color, label=label)
        pgd_ax.plot(epochs, np.asarray(history.get("pgd_val_accuracy", [])) * 100, marker="o", color=color, label=label)
        if "pgd_no_eot_val_accuracy" in history:
            pgd_ax.plot(epochs, np.asarray(history["pgd_no_eot_val_accuracy"]) * 100, ls="--", color=color,
                        label=f"{label} (no EOT)")
    for ax, name in ((clean_ax, "clean accuracy (%)"), (pgd_ax, "PGD-10 accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    pgd_ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_pnil_history(histories: dict, path, title: str) -> Path | None:
    """Per-epoch noise σ of the PNIL runs among `histories` on object (solid) and background (dashed) pixels:
    whether, and when, the layer learns Figure 1's structure. None if no run logged it.

    Example:
        >>> plot_pnil_history({"NFGSM + PNIL": "runs/b/history.csv"}, "pnil_sigma_mnist.png", "MNIST")
        PosixPath('pnil_sigma_mnist.png')
    """
    logged = {label: h for label, h in ((label, read_history(p)) for label, p in histories.items())
              if "pnil_sigma_object" in h}
    if not logged:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (label, history) in enumerate(logged.items()):
        color, epochs = plt.get_cmap("tab10")(i % 10), range(1, len(history["pnil_sigma_object"]) + 1)
        ax.plot(epochs, history["pnil_sigma_object"], marker="o", color=color, label=f"{label}: object")
        ax.plot(epochs, history["pnil_sigma_background"], ls="--", marker=".", color=color,
                label=f"{label}: background")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean noise σ")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: the curves fill the axes
    ax.set_title(title)
    path = _save(fig, path)
    plt.close(fig)
    return path
