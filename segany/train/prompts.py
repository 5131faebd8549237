"""Simulated interactive segmentation for training (SAM paper App. A "Training algorithm", §3 "11 rounds").

For every sampled ground-truth mask of one image:

1. the first prompt is, with equal odds, a foreground point drawn uniformly from the mask, or the mask's box with
   Gaussian noise on each coordinate (std 10 % of the box side, capped at 20 px);
2. then 8 rounds each add a point drawn uniformly from the error region between the previous prediction and the
   ground truth — positive where the prediction missed foreground, negative on a false alarm — while the previous
   low-res logits of the best mask (highest predicted IoU) are fed back as the mask prompt;
3. plus 2 rounds with no new point (mask prompt only): one at a random position among the 8, one at the end.

That is 11 decoder calls per mask. Everything is vectorised over the masks — of one image or of a whole batch of
images, each mask pointing at its image's embedding — and the image encoder runs once per image (the caller
passes the embeddings). Masks whose first prompt was a box and those whose first prompt was a point
are decoded in two groups, because the prompt encoder takes a box for every prompt in a call or for none.

Frames: ground truth is ``[N, S, S]`` in the padded model-input frame (``S = image_size``), points are ``(x, y)``
integer pixel indices in that frame (the prompt encoder adds the half-pixel shift itself), boxes are XYXY with
inclusive max, mask prompts are ``[N, 1, 4h, 4w]`` low-res logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segany.modeling import MaskDecoder, PromptEncoder
from segany.train.losses import PAPER, LossWeights, SamLossOutput, sam_loss, sam_loss_multi_target

BOX_NOISE_FRACTION = 0.1
BOX_NOISE_CAP_PX = 20.0
NEAR_DUPLICATE_IOU = 0.8  # another mask this close to the sampled one is the same answer, not a second one
# "near the object" for background clicks: its box grown by this share of its side plus this many pixels per side
BACKGROUND_MARGIN_FRACTION = 0.25
BACKGROUND_MARGIN_PX = 8


def _check_masks(gt: torch.Tensor) -> torch.Tensor:
    if gt.dim() != 3:
        raise ValueError(f"ground truth must be [N, H, W], got {tuple(gt.shape)}")
    gt = gt.bool()
    if not bool(gt.flatten(1).any(1).all()):
        raise ValueError("every ground-truth mask must have at least one foreground pixel")
    return gt


def _sample_pixels(region: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One pixel per row, uniform over the True pixels of ``region`` ``[N, H, W]`` (each row non-empty).

    Inverse-CDF sampling (cumulative count + binary search): ``torch.multinomial`` took a sixth of the decoder
    rounds' CPU time (16 masks at 512²: 186 ms per call against 38 ms here, 1 thread). Returns ``[N, 2]`` long
    ``(x, y)``.
    """
    n, _, w = region.shape
    counts = region.reshape(n, -1).cumsum(1)  # int64
    total = counts[:, -1]
    r = (torch.rand(n, generator=generator, device=region.device, dtype=torch.float64) * total).long()
    idx = torch.searchsorted(counts, torch.minimum(r, total - 1)[:, None], right=True).squeeze(1)
    return torch.stack([idx % w, idx // w], dim=1)


def interior_error_points(pred_low: torch.Tensor, gt_low: torch.Tensor, stride: int) -> torch.Tensor:
    """A corrective click placed the way the evaluation protocol places its clicks, at the loss resolution: the
    interior-most pixel (`segany.evaluate.clicks.interior_point`) of the whole error region ``pred XOR gt``.
    (The protocol itself first picks the larger of the missed and the false-alarm pixels; the training click
    keeps both, so that it also lands on whichever error is thicker.)

    Arguments:
      pred_low, gt_low: ``[N, h, w]`` bool; stride: input pixels per low-res cell.

    Returns:
      ``[N, 2]`` long ``(x, y)`` at the cell's centre in the input frame. A mask with no error gets its
      foreground's interior-most pixel.
    """
    from segany.evaluate.clicks import interior_point

    err = (pred_low ^ gt_low).cpu().numpy()
    gt = gt_low.cpu().numpy()
    out = torch.empty(len(err), 2, dtype=torch.long)
    for i, (e, g) in enumerate(zip(err, gt, strict=True)):
        point = interior_point(e if e.any() else g)
        assert point is not None  # every ground-truth mask is non-empty (checked by the simulation)
        out[i, 0], out[i, 1] = point[0] * stride + stride // 2, point[1] * stride + stride // 2
    return out.to(pred_low.device)


def sample_foreground_points(gt: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A point uniform over each mask's foreground: ``[N, H, W]`` -> ``[N, 2]`` long ``(x, y)``."""
    return _sample_pixels(_check_masks(gt), generator)


def masks_to_boxes(gt: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes with inclusive max of non-empty masks ``[N, H, W]`` -> ``[N, 4]`` float."""
    gt = _check_masks(gt)
    _, h, w = gt.shape
    cols = gt.any(1)  # N x W
    rows = gt.any(2)  # N x H
    xs = torch.arange(w, device=gt.device)
    ys = torch.arange(h, device=gt.device)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def jitter_boxes(
    boxes: torch.Tensor,
    generator: torch.Generator | None = None,
    fraction: float = BOX_NOISE_FRACTION,
    cap_px: float = BOX_NOISE_CAP_PX,
    bounds: tuple[int, int] | None = None,
) -> torch.Tensor:
    """XYXY boxes ``[N, 4]`` with Gaussian noise per coordinate, std = ``fraction`` x side, at most ``cap_px``.

    x coordinates use the box width, y the height. With ``bounds = (H, W)`` the result is clipped to the frame;
    it is re-ordered so that ``x0 <= x1`` and ``y0 <= y1``. Returns ``[N, 4]`` float.
    """
    boxes = boxes.float()
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1)  # N x (w, h)
    std = (side * fraction).clamp(max=cap_px).repeat(1, 2)  # x0, y0, x1, y1 -> w, h, w, h
    out = boxes + torch.randn(boxes.shape, generator=generator, device=boxes.device) * std
    if bounds is not None:
        h, w = bounds
        out[:, 0::2] = out[:, 0::2].clamp(0, w - 1)
        out[:, 1::2] = out[:, 1::2].clamp(0, h - 1)
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1)


def noisy_boxes(gt: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's noisy box prompt for masks ``[N, H, W]``: tight box + ``jitter_boxes``, clipped to the frame."""
    return jitter_boxes(masks_to_boxes(gt), generator, bounds=(gt.shape[-2], gt.shape[-1]))


def sample_error_points(
    pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A corrective click per mask, uniform over the error region ``pred XOR gt``.

    Arguments:
      pred: ``[N, H, W]`` bool current prediction; gt: ``[N, H, W]`` ground truth (each non-empty).

    Returns:
      ``(points [N, 2] long (x, y), labels [N] long)`` — label 1 where the point is a miss (foreground predicted as
      background), 0 on a false alarm. A mask already predicted perfectly gets a positive point on its
      foreground, which restates the truth without contradicting it.
    """
    gt = _check_masks(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
    return _error_points(pred, gt, generator)


def _error_points(
    pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    # the checks of `sample_error_points` are done once per simulation: each would be a device sync per round
    err = pred.bool() ^ gt
    none = ~err.flatten(1).any(1)
    region = torch.where(none[:, None, None], gt, err)
    pts = _sample_pixels(region, generator)
    labels = gt[torch.arange(gt.shape[0], device=gt.device), pts[:, 1], pts[:, 0]].long()
    return pts, labels


def background_points(gt: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A background click near each object: uniform over the pixels outside the mask but inside its box grown by
    a quarter of its size (+ 8 px) on each side — where an annotator clicks to say "not the table under the cup".

    A mask whose grown box holds no background pixel gets a pixel of its own foreground (the caller's label
    decides). Returns ``[N, 2]`` long ``(x, y)``.
    """
    n, h, w = gt.shape
    box = masks_to_boxes(gt)
    mx = (box[:, 2] - box[:, 0] + 1) * BACKGROUND_MARGIN_FRACTION + BACKGROUND_MARGIN_PX
    my = (box[:, 3] - box[:, 1] + 1) * BACKGROUND_MARGIN_FRACTION + BACKGROUND_MARGIN_PX
    xs = torch.arange(w, device=gt.device, dtype=box.dtype)
    ys = torch.arange(h, device=gt.device, dtype=box.dtype)
    in_x = (xs[None] >= (box[:, 0] - mx)[:, None]) & (xs[None] <= (box[:, 2] + mx)[:, None])  # N x W
    in_y = (ys[None] >= (box[:, 1] - my)[:, None]) & (ys[None] <= (box[:, 3] + my)[:, None])  # N x H
    region = in_y[:, :, None] & in_x[:, None, :] & ~gt
    empty = ~region.flatten(1).any(1)
    region = torch.where(empty[:, None, None], gt, region)
    return _sample_pixels(region, generator)


def nested_targets(
    gt_low: torch.Tensor, others: torch.Tensor, points: torch.Tensor, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The right answers to one click: the sampled mask and up to two other masks of its image that hold the
    click and are not near-duplicates of it (whole/part: the person around a shirt, the shirt inside a person),
    the largest first. Deterministic: it draws nothing from the simulation's random stream.

    Arguments:
      gt_low: ``[N, h, w]`` bool sampled masks at the loss resolution; others: ``[N, A, h, w]`` bool, the other
        masks of each one's image (zero-padded); points: ``[N, 2]`` ``(x, y)`` clicks in the input frame;
        stride: input pixels per loss cell.

    Returns:
      ``(targets [N, 3, h, w] bool, valid [N, 3] bool)``, target 0 being the sampled mask.
    """
    n, a, h, w = others.shape
    cx = (points[:, 0].long() // stride).clamp(0, w - 1)
    cy = (points[:, 1].long() // stride).clamp(0, h - 1)
    rows = torch.arange(n, device=others.device)
    holds = others[rows, :, cy, cx]  # N x A
    inter = (others & gt_low[:, None]).flatten(2).sum(-1).float()
    union = (others | gt_low[:, None]).flatten(2).sum(-1).float().clamp(min=1)
    valid = holds & (inter / union < NEAR_DUPLICATE_IOU)
    key = valid.float() * 2 + others.flatten(2).float().mean(-1)  # valid first, then by area
    top = key.topk(min(2, a), dim=1).indices  # N x <=2
    alt = others[rows[:, None], top]
    alt_valid = valid.gather(1, top)
    pad = 2 - top.shape[1]
    if pad:
        alt = torch.cat([alt, alt.new_zeros(n, pad, h, w)], 1)
        alt_valid = torch.cat([alt_valid, alt_valid.new_zeros(n, pad)], 1)
    targets = torch.cat([gt_low[:, None], alt], 1)
    return targets, torch.cat([torch.ones(n, 1, dtype=torch.bool, device=others.device), alt_valid], 1)


def round_schedule(
    generator: torch.Generator | None = None, n_points: int = 8, n_empty: int = 2
) -> list[bool]:
    """Which rounds after the first prompt add a point (True) or only feed the mask back (False).

    ``n_empty - 1`` no-point rounds are inserted at random positions among the ``n_points`` point rounds and one
    is always last; the paper's default (8, 2) gives 10 rounds, 11 decoder calls with the first prompt.
    """
    if n_points < 0 or n_empty < 0:
        raise ValueError("round counts must be >= 0")
    sched = [True] * n_points
    for _ in range(max(n_empty - 1, 0)):
        # before one of the point rounds (or first, if there are none)
        pos = int(torch.randint(0, max(len(sched), 1), (1,), generator=generator, device="cpu"))
        sched.insert(pos, False)
    if n_empty > 0:
        sched.append(False)
    return sched


@dataclass
class RoundRecord:
    """Per-round diagnostics (detached): loss and the actual IoU of the supervised masks, averaged over masks."""

    loss: float
    iou: float


class _Group:
    """The masks of one first-prompt kind, and their growing prompt set."""

    def __init__(
        self,
        index: torch.Tensor,
        gt: torch.Tensor,
        gt_low: torch.Tensor,
        boxes: torch.Tensor | None,
        points: torch.Tensor,
        labels: torch.Tensor,
        others: torch.Tensor | None = None,
    ) -> None:
        self.index = index  # image of each mask
        self.others = others  # n x A x h x w other masks of each one's image (nested answers), or None
        self.gt, self.gt_low, self.boxes = gt, gt_low, boxes
        self.points = points  # n x P x 2 float
        self.labels = labels  # n x P long
        self.mask_input: torch.Tensor | None = None

    @property
    def multimask(self) -> bool:
        # ambiguous only with a single point and no box; more prompts -> the single-mask token is supervised
        return self.boxes is None and self.points.shape[1] == 1


def simulate_interactive(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_embedding: torch.Tensor,
    gt: torch.Tensor,
    image_index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    schedule_generator: torch.Generator | None = None,
    n_points: int = 8,
    n_empty: int = 2,
    center_click_p: float = 0.0,
    single_mask_first_weight: float = 0.0,
    backward: Callable[[torch.Tensor], None] | None = None,
    loss_weight: float = 1.0,
    loss_weights: LossWeights = PAPER,
    others: torch.Tensor | None = None,
    background_click_p: float = 0.0,
) -> list[RoundRecord]:
    """Run the 1 + ``n_points`` + ``n_empty`` rounds on one image's masks, supervising every round.

    Arguments:
      prompt_encoder, mask_decoder: SAM's modules (official call signatures).
      image_embedding: ``[B, C, h, w]`` the images' encoder outputs; gradients reach the encoder through them.
      gt: ``[N, S, S]`` bool ground-truth masks in the padded input frame; ``S`` must equal the prompt encoder's
        input size.
      image_index: ``[N]`` long, which of the B images each mask belongs to (may be None when B = 1). Batching
        the masks of several images into one decoder call needs a decoder that accepts one embedding per prompt
        (segany's does; the official one accepts only one image per call).
      generator: a ``torch.Generator`` on the embedding's device for every random choice of the masks (prompt
        kind, points, noise); with a CPU generator for the schedule, a seeded run is reproducible.
      schedule_generator: a CPU generator for the round schedule (defaults to the global RNG).
      backward: if given, called with each round's weighted loss right away, so that one round's decoder graph is
        freed before the next (memory stays at one round); the caller then back-propagates the embedding once.
        If None, nothing is back-propagated (evaluation).
      loss_weight: factor on every round's loss (e.g. ``1 / rounds`` for a mean over rounds).
      loss_weights: the loss constants (default: the paper's).
      center_click_p: share of corrective clicks placed by `interior_error_points` (the evaluation protocol's
        click) instead of uniformly in the error region (the paper's, 0).
      single_mask_first_weight: weight of an extra loss on mask token 0 (the single-mask output) in ambiguous
        first-point calls, against the sampled mask; the paper's 0 leaves token 0 untrained on one point.
      others: ``[N, A, h, w]`` bool at the loss resolution, the other masks of each mask's image (zero-padded):
        on the first point, those that hold the click are right answers too (`nested_targets`,
        `sam_loss_multi_target`); None is the paper's one sampled target.
      background_click_p: share of corrective clicks replaced by a negative click on the background near the
        object (`background_points`), whatever the current mask: the paper's clicks come only from the error
        region, so a negative click where the mask is already right was never seen in training and the model
        learned that any negative click means "shrink".

    Returns:
      One ``RoundRecord`` per round.
    """
    gt = _check_masks(gt)
    s = tuple(prompt_encoder.input_image_size)
    if tuple(gt.shape[-2:]) != s:
        raise ValueError(f"gt frame {tuple(gt.shape[-2:])} must equal the prompt encoder input size {s}")
    if image_embedding.dim() != 4:
        raise ValueError("image_embedding must be [B, C, h, w]")
    dev = image_embedding.device
    n = gt.shape[0]
    if image_index is None:
        if image_embedding.shape[0] != 1:
            raise ValueError("image_index is required with more than one image embedding")
        image_index = torch.zeros(n, dtype=torch.long, device=dev)
    if image_index.shape != (n,):
        raise ValueError(f"image_index must be [{n}], got {tuple(image_index.shape)}")
    single_image = image_embedding.shape[0] == 1
    low = tuple(4 * x for x in prompt_encoder.image_embedding_size)
    gt_low = F.interpolate(gt[:, None].float(), size=low, mode="area")[:, 0] > 0.5  # loss frame
    if generator is not None and generator.device.type != dev.type:
        raise ValueError(f"generator on {generator.device} but the embedding is on {dev}")

    if others is not None and (
        others.dim() != 4 or others.shape[0] != n or others.shape[-2:] != gt_low.shape[-2:]
    ):
        raise ValueError(f"others must be [{n}, A, h, w] at the loss resolution, got {tuple(others.shape)}")

    use_box = torch.rand(n, generator=generator, device=dev) < 0.5
    groups: list[tuple[torch.Tensor, _Group]] = []  # (indices into the N masks, group)
    box_idx = torch.nonzero(use_box).squeeze(1)
    pt_idx = torch.nonzero(~use_box).squeeze(1)
    if len(box_idx):
        boxes = noisy_boxes(gt[box_idx], generator)
        empty_pts = torch.zeros(len(box_idx), 0, 2, device=dev)
        empty_lbl = torch.zeros(len(box_idx), 0, dtype=torch.long, device=dev)
        groups.append(
            (box_idx, _Group(image_index[box_idx], gt[box_idx], gt_low[box_idx], boxes, empty_pts, empty_lbl))
        )
    if len(pt_idx):
        pts = sample_foreground_points(gt[pt_idx], generator).float()[:, None]
        lbl = torch.ones(len(pt_idx), 1, dtype=torch.long, device=dev)
        grp_others = None if others is None else others[pt_idx]
        groups.append(
            (pt_idx, _Group(image_index[pt_idx], gt[pt_idx], gt_low[pt_idx], None, pts, lbl, grp_others))
        )

    image_pe = prompt_encoder.get_dense_pe()
    schedule = [True] + round_schedule(schedule_generator, n_points, n_empty)
    losses: list[torch.Tensor] = []
    ious: list[torch.Tensor] = []
    for r, adds_point in enumerate(schedule):
        total = torch.zeros((), device=dev)
        iou_sum = torch.zeros((), device=dev)
        for _, grp in groups:
            if adds_point and r > 0:
                pred = grp.mask_input  # previous best logits, low-res
                assert pred is not None
                pred_full = F.interpolate(pred, size=s, mode="bilinear", align_corners=False)[:, 0] > 0
                pts, lbl = _error_points(pred_full, grp.gt, generator)
                if center_click_p > 0:
                    pick = torch.rand(len(pts), generator=generator, device=dev) < center_click_p
                    if bool(pick.any()):
                        stride = s[0] // grp.gt_low.shape[-1]
                        c = interior_error_points(pred[pick, 0] > 0, grp.gt_low[pick], stride)
                        pts[pick] = c
                        lbl[pick] = grp.gt[pick, c[:, 1], c[:, 0]].long()
                if background_click_p > 0:
                    bg = torch.rand(len(pts), generator=generator, device=dev) < background_click_p
                    if bool(bg.any()):
                        b = background_points(grp.gt[bg], generator)
                        pts[bg] = b
                        lbl[bg] = grp.gt[bg, b[:, 1], b[:, 0]].long()
                grp.points = torch.cat([grp.points, pts.float()[:, None]], 1)
                grp.labels = torch.cat([grp.labels, lbl[:, None]], 1)
            points = (grp.points, grp.labels) if grp.points.shape[1] > 0 else None
            sparse, dense = prompt_encoder(points=points, boxes=grp.boxes, masks=grp.mask_input)
            # one shared embedding broadcasts inside the decoder; several images: one embedding row per prompt
            emb = image_embedding if single_image else image_embedding[grp.index]
            extra = None
            if grp.multimask and single_mask_first_weight > 0:
                # all 4 tokens come out of one decoder pass: token 0 costs only its loss
                all_logits, all_iou = mask_decoder.predict_masks(emb, image_pe, sparse, dense)
                logits, iou_pred = all_logits[:, 1:], all_iou[:, 1:]
                extra = sam_loss(all_logits[:, :1].float(), all_iou[:, :1].float(), grp.gt_low, loss_weights)
            else:
                logits, iou_pred = mask_decoder(
                    image_embeddings=emb,
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=grp.multimask,
                )
            if grp.multimask and grp.others is not None and r == 0:
                stride = s[0] // grp.gt_low.shape[-1]
                targets, valid = nested_targets(grp.gt_low, grp.others, grp.points[:, 0], stride)
                out: SamLossOutput = sam_loss_multi_target(
                    logits.float(), iou_pred.float(), targets, valid, loss_weights
                )
            else:
                out = sam_loss(logits.float(), iou_pred.float(), grp.gt_low, loss_weights)
            group_loss = out.loss if extra is None else out.loss + single_mask_first_weight * extra.loss
            weighted = group_loss * (grp.gt.shape[0] / n) * loss_weight
            if backward is not None:
                backward(weighted)
            total = total + out.loss.detach() * grp.gt.shape[0] / n
            iou_sum = iou_sum + out.actual_iou.sum()
            # feed back the mask the model itself would pick: highest predicted IoU (not the supervised one)
            pick = iou_pred.detach().argmax(1)
            grp.mask_input = logits.detach()[torch.arange(logits.shape[0], device=dev), pick][:, None].float()
        losses.append(total)
        ious.append(iou_sum / n)
    # one device sync for the diagnostics, not one per round
    stats = torch.stack([torch.stack(losses), torch.stack(ious)], 1).tolist()
    return [RoundRecord(loss=lo, iou=io) for lo, io in stats]
