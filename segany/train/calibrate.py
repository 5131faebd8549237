"""Post-hoc calibration of the IoU head on training images.

A short CPU training run leaves the IoU head ranking masks somewhat (Spearman rho > 0) but with each output
token off by its own offset and scale: one token's 0.5 is another's 0.3. The generator's thresholds, the
proposal ranking and "the top-scored mask of three" all compare these numbers, so the offsets cost quality
where the masks themselves are fine. The cure, as temperature scaling is for classifiers, is a per-token affine
map ``iou' = a_k * iou_k + b_k`` fitted by least squares to the actual IoU of the masks on images the model
trained on (never the validation split). The map is folded into the head's last linear layer, so the file keeps
SAM's layout and every surface (predictor, generator, ONNX, page) gets calibrated scores with no extra code.

Clicks follow the evaluation protocol's first click (the object's interior-most pixel) plus one random pixel
inside the object; the actual IoU is against the clicked object, as the validation split measures it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from segany.data.sample import Sample

MIN_SCALE = 0.05  # a token with no usable signal keeps a small positive slope: its ranking, not a constant


@dataclass
class IouCalibration:
    """The per-token map (index 0: the single-mask token, 1-3: the multimask tokens) and what it bought on
    the masks it was fitted to."""

    scale: list[float]
    shift: list[float]
    masks: int
    mae_before: float
    mae_after: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_first_clicks(
    predictor: Any,
    samples: Iterable[Sample],
    *,
    objects_per_image: int = 2,
    min_object_fraction: float = 0.005,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(token, predicted, actual)`` for every mask the network returns to the first clicks on the objects of
    ``samples``: three multimask answers (tokens 1-3) and the single-mask answer (token 0) per click."""
    from segany.evaluate.clicks import interior_point, mask_iou
    from segany.evaluate.validation import pick_objects

    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    predicted: list[float] = []
    actual: list[float] = []
    for n, sample in enumerate(samples, start=1):
        objects = pick_objects(sample, objects_per_image, min_object_fraction, seed)
        if not objects:
            continue
        predictor.set_image(sample.image)
        for j in objects:
            gt = sample.masks[j]
            ys, xs = np.nonzero(gt)
            k = int(rng.integers(len(ys)))
            centre = interior_point(gt)
            assert centre is not None
            for xy in (centre, (int(xs[k]), int(ys[k]))):
                coords, labels = np.array([xy], dtype=np.float64), np.array([1])
                many, many_scores, _ = predictor.predict(coords, labels, multimask_output=True)
                one, one_score, _ = predictor.predict(coords, labels, multimask_output=False)
                for token, (m, s) in enumerate(
                    [(one[0], one_score[0])] + list(zip(many, many_scores, strict=True))
                ):
                    tokens.append(token)
                    predicted.append(float(s))
                    actual.append(mask_iou(m, gt))
        if progress is not None:
            progress(n)
    return np.array(tokens), np.array(predicted), np.array(actual)


def fit_iou_calibration(tokens: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> IouCalibration:
    """Least-squares ``a_k, b_k`` per token (``a_k >= MIN_SCALE``, so no token's ranking is reversed or lost)."""
    n_tokens = int(tokens.max()) + 1 if len(tokens) else 0
    if n_tokens == 0:
        raise ValueError("no masks to calibrate on: the images held no object of the minimum size")
    scale, shift = [], []
    fitted = np.empty_like(predicted)
    for k in range(n_tokens):
        sel = tokens == k
        p, y = predicted[sel], actual[sel]
        if sel.sum() < 2 or np.ptp(p) == 0:
            a = 1.0
        else:
            a = float(np.cov(p, y, bias=True)[0, 1] / np.var(p))
        a = max(a, MIN_SCALE)
        b = float(np.mean(y - a * p)) if sel.any() else 0.0
        scale.append(a)
        shift.append(b)
        fitted[sel] = a * p + b
    return IouCalibration(
        scale=scale,
        shift=shift,
        masks=len(predicted),
        mae_before=float(np.abs(predicted - actual).mean()),
        mae_after=float(np.abs(fitted - actual).mean()),
    )


@torch.no_grad()
def fold_iou_calibration(model: torch.nn.Module, cal: IouCalibration) -> None:
    """Fold the map into ``mask_decoder.iou_prediction_head``'s last linear layer, in place."""
    from segany.modeling.common import MLP

    head = model.get_submodule("mask_decoder.iou_prediction_head")
    if not isinstance(head, MLP):
        raise ValueError(f"the model's IoU head is a {type(head).__name__}, not SAM's MLP")
    if head.sigmoid_output:
        raise ValueError("an IoU head with a sigmoid output (SAM 2) is not affine in its last layer")
    last = head.layers[-1]
    assert isinstance(last, torch.nn.Linear)
    if last.out_features != len(cal.scale):
        raise ValueError(f"the IoU head has {last.out_features} outputs, the calibration {len(cal.scale)}")
    a = torch.tensor(cal.scale, dtype=last.weight.dtype)
    b = torch.tensor(cal.shift, dtype=last.weight.dtype)
    last.weight.mul_(a[:, None])
    last.bias.mul_(a).add_(b)
