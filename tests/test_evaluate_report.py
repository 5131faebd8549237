"""Evaluation plots and labels: masks that can be seen on any background, best/worst cases in a grid."""

from __future__ import annotations

import numpy as np

from segany.evaluate import report


def _rendered(fig) -> np.ndarray:
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    report._pyplot().close(fig)
    return pixels


def _case(mask: np.ndarray, gt: np.ndarray, label: str = "x") -> dict:
    sky = np.empty((*mask.shape, 3), np.uint8)
    sky[:] = np.round(np.array(report.MASK_TINT) * 255)  # a background the colour of the mask's tint
    return {"image": sky, "mask": mask, "gt": gt, "label": label}


def test_a_mask_shows_on_a_background_of_its_own_colour():
    """A blue kite on a blue sky: the tint alone leaves the picture unchanged, the outline does not."""
    mask = np.zeros((40, 60), bool)
    mask[10:30, 15:40] = True
    gt = np.zeros_like(mask)
    gt[2:8, 2:8] = True  # elsewhere: its yellow outline is in both pictures
    with_mask = _rendered(report.overlay_figure([_case(mask, gt)], "t"))
    without = _rendered(report.overlay_figure([_case(np.zeros_like(mask), gt)], "t"))
    assert with_mask.shape == without.shape
    assert np.count_nonzero(np.any(with_mask != without, axis=-1)) > 100


def test_six_cases_are_a_grid_not_a_row():
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:20] = True
    fig = report.overlay_figure([_case(mask, mask, f"case {k}") for k in range(6)], "worst and best")
    shown = [ax for ax in fig.axes if ax.get_title()]
    rows = sorted({round(ax.get_position().y0, 3) for ax in shown})
    cols = sorted({round(ax.get_position().x0, 3) for ax in shown})
    assert len(rows) == 2 and len(cols) == 3
    # worst on the top row, best on the bottom one, in the given order
    top = [ax.get_title() for ax in shown if round(ax.get_position().y0, 3) == rows[1]]
    assert top == ["case 0", "case 1", "case 2"]
    report._pyplot().close(fig)


def test_weights_are_described_as_they_are():
    assert report.weights_description("tiny", None) == "random weights, untrained"
    assert report.weights_description("default", None) == "built-in weights"
    assert report.weights_description("tiny", "w.safetensors") == "w.safetensors"
