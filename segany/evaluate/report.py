"""Evaluation outputs a person can read: a Markdown table, a JSON of every number, and PNG plots (Agg backend)."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def run_metadata(
    model: str, checkpoint: str | None, data: Sequence[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """What produced the numbers: model, data, settings, and segany/torch versions."""
    import torch

    import segany

    return {
        "segany_version": segany.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "model": model,
        "checkpoint": checkpoint,
        "weights": weights_description(model, checkpoint),
        "data": [str(d) for d in data],
        "settings": settings,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def weights_description(model: str | None, checkpoint: str | None) -> str:
    """Where a run's weights came from, for a report: the checkpoint, the shipped weights, or (``tiny`` with no
    checkpoint) random initialisation, whose numbers measure nothing but the code path."""
    if checkpoint:
        return str(checkpoint)
    if model == "tiny":
        return "random weights, untrained"
    return "built-in weights"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NaN written as null so the file stays standard JSON)."""
    path.write_text(json.dumps(_finite(payload), indent=2) + "\n")


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats get 3 decimals."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "–" if not math.isfinite(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_click_curves(
    curves: dict[str, Sequence[float]], baselines: dict[str, float], path: Path, title: str = ""
) -> None:
    """mIoU after k clicks per dataset; each dataset's GrabCut-from-box mIoU as a dashed horizontal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (name, curve) in enumerate(curves.items()):
        color = f"C{i % 10}"
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, color=color, label=f"{name} (model)")
        if name in baselines:
            ax.axhline(baselines[name], color=color, ls="--", lw=1, label=f"{name} GrabCut (box)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title or "interactive segmentation: mIoU vs clicks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pr_curves(curves: dict[str, dict[str, Any]], path: Path) -> None:
    """Edge precision-recall curves, ODS point marked, with iso-F contours."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    f_grid = np.linspace(0.01, 1, 200)
    for f in (0.2, 0.4, 0.6, 0.8):
        r = f_grid[f_grid > f / 2]
        p = f * r / (2 * r - f)
        ok = (p >= 0) & (p <= 1)
        ax.plot(r[ok], p[ok], color="0.85", lw=0.8)
    for i, (name, s) in enumerate(curves.items()):
        r, p = np.asarray(s["recall"]), np.asarray(s["precision"])
        keep = (r > 0) | (p > 0)
        ax.plot(r[keep], p[keep], color=f"C{i}", label=f"{name} (ODS {s['ods']:.3f})")
        ax.plot([s["ods_recall"]], [s["ods_precision"]], "o", color=f"C{i}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("BSDS boundary benchmark")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


OVERLAY_COLUMNS = 3
MASK_TINT = (0.1, 0.45, 1.0)


def plot_overlays(cases: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Example overlays in a grid of up to `OVERLAY_COLUMNS` columns: each case has ``image``, ``mask``
    (prediction), ``gt``, ``label`` and optionally ``clicks`` (``[(x, y, positive)]``)."""
    if not cases:
        return
    plt = _pyplot()
    fig = overlay_figure(cases, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overlay_figure(cases: Sequence[dict[str, Any]], title: str) -> Any:
    """The figure of `plot_overlays`. The predicted mask is tinted blue *and* outlined (a white line on a black
    one), so that it shows on any background, a blue one included; the GT is outlined in yellow."""
    plt = _pyplot()
    ncols = min(len(cases), OVERLAY_COLUMNS)
    nrows = math.ceil(len(cases) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[len(cases) :]:
        ax.axis("off")
    for ax, case in zip(flat, cases, strict=False):
        image = case["image"].astype(np.float32) / 255.0
        shown = image.copy()
        mask, gt = np.asarray(case["mask"], dtype=bool), np.asarray(case["gt"], dtype=bool)
        shown[mask] = 0.5 * shown[mask] + 0.5 * np.array(MASK_TINT)
        ax.imshow(shown)
        if mask.any():
            outline = np.pad(mask, 1).astype(float)  # padded: a mask touching the border is closed there too
            xs, ys = np.arange(-1, mask.shape[1] + 1), np.arange(-1, mask.shape[0] + 1)
            for color, width in (("black", 2.2), ("white", 1.0)):
                ax.contour(xs, ys, outline, levels=[0.5], colors=[color], linewidths=width)
        if gt.any():
            ax.contour(gt.astype(float), levels=[0.5], colors=["yellow"], linewidths=0.8)
        for x, y, positive in case.get("clicks", []):
            ax.plot(x, y, marker="o", ms=6, mec="white", color="lime" if positive else "red")
        ax.set_xlim(-0.5, mask.shape[1] - 0.5)
        ax.set_ylim(mask.shape[0] - 0.5, -0.5)
        ax.set_title(case["label"], fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_edge_examples(examples: Sequence[dict[str, Any]], path: Path) -> None:
    """Rows of image | model edges | Canny edges | human boundaries (all annotators)."""
    if not examples:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(len(examples), 4, figsize=(12, 2.6 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples, strict=True):
        panels = [ex["image"], 1 - ex["model"], 1 - ex["canny"], 1 - ex["gt"]]
        names = [ex["label"], "model edges", "Canny", "human boundaries"]
        for ax, img, name in zip(row, panels, names, strict=True):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
