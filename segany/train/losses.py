"""SAM's training losses, as the paper states them (App. A "Losses", "Making the model ambiguity-aware").

Mask loss = 20 * focal + 1 * dice on the mask logits; the IoU head is trained with MSE against the *actual* IoU of
each predicted mask with its ground truth (weight 1). With an ambiguous prompt (one point) the decoder returns 3
masks and only the one with the lowest mask loss is back-propagated; with more than one prompt only the single
mask (mask token 0) is supervised.

The paper does not give the focal parameters. We use alpha = 0.25, gamma = 2 — the values of the focal-loss paper
(Lin et al., 2017) that DETR/MaskFormer (which SAM says it follows) and SAM 2's released training code use.

All functions are pure: tensors in, tensors out, no module state. Shapes use ``...`` for any leading batch dims
(e.g. ``N`` prompts x ``K`` masks); the last two dims are the mask ``H x W``; logits and targets share their size
(the caller chooses the resolution at which the loss is computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0


def _check_pair(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape"
        )
    if logits.dim() < 2:
        raise ValueError("masks need at least 2 dims (H, W)")


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA
) -> torch.Tensor:
    """Mean over pixels of the sigmoid focal loss of Lin et al.

    Arguments:
      logits: ``[..., H, W]`` float mask logits.
      targets: ``[..., H, W]`` ground truth in {0, 1} (bool or float).
      alpha: weight of the positive class (``1 - alpha`` for negatives); ``alpha < 0`` disables the weighting.
      gamma: focusing exponent; 0 gives plain (alpha-weighted) binary cross-entropy.

    Returns:
      ``[...]`` loss per mask. Averaging per mask (not per batch) keeps every mask's weight equal whatever its size.
    """
    _check_pair(logits, targets)
    logits = logits.float()
    t = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss ``1 - (2 |p t| + s) / (|p| + |t| + s)`` with ``p = sigmoid(logits)``.

    Arguments:
      logits: ``[..., H, W]`` mask logits; targets: ``[..., H, W]`` in {0, 1}.
      smooth: additive smoothing (DETR uses 1) so that an empty target predicted empty costs 0, not NaN.

    Returns:
      ``[...]`` loss per mask, in [0, 1).
    """
    _check_pair(logits, targets)
    p = torch.sigmoid(logits.float()).flatten(-2)
    t = targets.to(p.dtype).flatten(-2)
    inter = (p * t).sum(-1)
    return 1 - (2 * inter + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


@dataclass(frozen=True)
class LossWeights:
    """The loss's constants; the defaults are the paper's (focal : dice : IoU-MSE = 20 : 1 : 1, alpha 0.25,
    gamma 2). Other values exist for experiments (e.g. ``focal_gamma=0, focal_alpha=-1`` is plain BCE)."""

    focal: float = FOCAL_WEIGHT
    dice: float = DICE_WEIGHT
    iou: float = IOU_WEIGHT
    focal_alpha: float = FOCAL_ALPHA
    focal_gamma: float = FOCAL_GAMMA


PAPER = LossWeights()


def mask_loss(logits: torch.Tensor, targets: torch.Tensor, w: LossWeights = PAPER) -> torch.Tensor:
    """The paper's mask loss, focal : dice = 20 : 1, per mask (``[..., H, W]`` -> ``[...]``)."""
    focal = sigmoid_focal_loss(logits, targets, w.focal_alpha, w.focal_gamma)
    return w.focal * focal + w.dice * dice_loss(logits, targets)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Actual IoU of the mask ``logits > threshold`` with ``targets``, per mask, without gradient.

    Two empty masks count as IoU 1 (a perfect prediction of nothing).
    """
    _check_pair(logits, targets)
    with torch.no_grad():
        pred = (logits > threshold).flatten(-2)
        gt = targets.bool().flatten(-2)
        inter = (pred & gt).sum(-1).float()
        union = (pred | gt).sum(-1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_mse_loss(iou_pred: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE between the IoU head's estimate and each predicted mask's actual IoU, per mask.

    Arguments:
      iou_pred: ``[...]`` raw IoU-head outputs; logits / targets: ``[..., H, W]``.

    Returns:
      ``[...]`` squared error; the target IoU is a constant (no gradient flows into the masks through it).
    """
    if iou_pred.shape != logits.shape[:-2]:
        raise ValueError(
            f"iou_pred {tuple(iou_pred.shape)} must match the mask batch {tuple(logits.shape[:-2])}"
        )
    return (iou_pred.float() - mask_iou(logits, targets)) ** 2


@dataclass
class SamLossOutput:
    """What one decoder call's supervision produced.

    ``loss`` is the scalar to back-propagate (mean over prompts); the rest are detached per-prompt diagnostics.
    """

    loss: torch.Tensor
    mask: torch.Tensor  # [N] mask loss of the supervised mask
    iou: torch.Tensor  # [N] IoU-MSE averaged over the K masks
    best: torch.Tensor  # [N] long: index (into the K outputs) of the supervised mask
    actual_iou: torch.Tensor  # [N] actual IoU of the supervised mask


def sam_loss(
    mask_logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor, w: LossWeights = PAPER
) -> SamLossOutput:
    """Ambiguity-aware SAM loss for one decoder call over ``N`` prompts.

    Arguments:
      mask_logits: ``[N, K, H, W]``; ``K = 3`` for an ambiguous (multimask) call, ``K = 1`` for a single-mask call
        (mask token 0, used when there is more than one prompt).
      iou_pred: ``[N, K]`` the IoU head's outputs for the same masks.
      targets: ``[N, H, W]`` ground truth in {0, 1}.
      w: the loss constants (default: the paper's).

    Returns:
      ``SamLossOutput``. The mask loss is the minimum over the K masks (only that mask gets a mask-loss gradient);
      the IoU head is supervised on all K masks, because at inference it is what ranks them.
    """
    if mask_logits.dim() != 4 or iou_pred.shape != mask_logits.shape[:2]:
        raise ValueError(
            f"expected [N,K,H,W] logits and [N,K] iou_pred, got {tuple(mask_logits.shape)}, "
            f"{tuple(iou_pred.shape)}"
        )
    if targets.shape != (mask_logits.shape[0], *mask_logits.shape[2:]):
        raise ValueError(f"targets {tuple(targets.shape)} do not match logits {tuple(mask_logits.shape)}")
    t = targets.unsqueeze(1).expand_as(mask_logits)
    per_mask = mask_loss(mask_logits, t, w)  # N x K
    best = per_mask.detach().argmin(dim=1)  # N
    chosen = per_mask.gather(1, best[:, None]).squeeze(1)  # N
    iou_err = iou_mse_loss(iou_pred, mask_logits, t)  # N x K
    loss = chosen.mean() + w.iou * iou_err.mean()
    actual = mask_iou(mask_logits, t).gather(1, best[:, None]).squeeze(1)
    return SamLossOutput(
        loss=loss, mask=chosen.detach(), iou=iou_err.detach().mean(1), best=best, actual_iou=actual
    )


def _assignments(k: int, t: int, device: torch.device) -> torch.Tensor:
    """Every injective map of ``t`` targets to ``k`` outputs: ``[P, t]`` long (``P = k! / (k - t)!``)."""
    import itertools

    return torch.tensor(list(itertools.permutations(range(k), t)), dtype=torch.long, device=device)


def sam_loss_multi_target(
    mask_logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    w: LossWeights = PAPER,
) -> SamLossOutput:
    """The ambiguity-aware loss when one prompt has several right answers (a click on a shirt: the shirt, the
    person), target 0 being the sampled one.

    The paper back-propagates only the best of the 3 masks against one sampled target, so nested objects are
    learned only if the same click happens to be drawn with each of them; here every valid target is matched to
    its own output (the cheapest one-to-one assignment, so whole and part land in different tokens) and the mask
    loss is their mean. The IoU head learns, for each output, its IoU with the valid target it overlaps most:
    a mask that is a right answer is scored as one, which is what makes the predicted IoU track quality when the
    prompt is ambiguous (against the sampled target alone, an equally right answer is scored near 0).

    Arguments:
      mask_logits: ``[N, K, H, W]``; iou_pred: ``[N, K]``.
      targets: ``[N, T, H, W]`` in {0, 1}, ``T <= K``; valid: ``[N, T]`` bool, ``valid[:, 0]`` all True.

    Returns:
      ``SamLossOutput`` whose ``best`` and ``actual_iou`` describe the output matched to target 0.
    """
    n, k = mask_logits.shape[:2]
    t = targets.shape[1]
    if iou_pred.shape != (n, k) or targets.shape != (n, t, *mask_logits.shape[2:]) or valid.shape != (n, t):
        raise ValueError(
            f"shapes do not match: logits {tuple(mask_logits.shape)}, iou_pred {tuple(iou_pred.shape)}, "
            f"targets {tuple(targets.shape)}, valid {tuple(valid.shape)}"
        )
    if t > k or not bool(valid[:, 0].all()):
        raise ValueError("need T <= K targets, target 0 (the sampled one) valid for every prompt")
    lg = mask_logits[:, :, None].expand(n, k, t, *mask_logits.shape[2:])
    tg = targets[:, None].expand(n, k, t, *targets.shape[2:])
    cost = mask_loss(lg, tg, w)  # N x K x T
    perms = _assignments(k, t, mask_logits.device)  # P x T: output of each target
    vf = valid.to(cost.dtype)
    per_perm = (cost[:, perms, torch.arange(t, device=cost.device)] * vf[:, None]).sum(-1)  # N x P
    choice = per_perm.detach().argmin(1)
    chosen = per_perm.gather(1, choice[:, None]).squeeze(1) / vf.sum(1)
    ious = mask_iou(lg, tg)  # N x K x T
    target_iou = torch.where(valid[:, None], ious, torch.full_like(ious, -1.0)).amax(-1)  # N x K
    iou_err = (iou_pred.float() - target_iou) ** 2
    loss = chosen.mean() + w.iou * iou_err.mean()
    best = perms[choice, 0]
    actual = ious[torch.arange(n, device=ious.device), best, 0]
    return SamLossOutput(
        loss=loss, mask=chosen.detach(), iou=iou_err.detach().mean(1), best=best, actual_iou=actual
    )
