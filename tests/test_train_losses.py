"""Known-answer tests for the SAM training losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segany.train.losses import dice_loss, iou_mse_loss, mask_iou, mask_loss, sam_loss, sigmoid_focal_loss


def test_focal_at_zero_logits_known_answer() -> None:
    # p = 0.5 everywhere: CE = ln 2, (1 - p_t)^2 = 1/4; alpha 0.25 on positives, 0.75 on negatives
    logits = torch.zeros(1, 2, 2)
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    expected = (0.25 + 0.75) / 2 * 0.25 * math.log(2)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_focal_reduces_to_bce_without_focusing_or_alpha() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    targets = torch.rand(3, 5, 7, generator=g) > 0.5
    got = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0)
    ref = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").mean((-2, -1))
    torch.testing.assert_close(got, ref)


def test_focal_downweights_easy_pixels() -> None:
    t = torch.ones(1, 1, 1)
    easy, hard = (
        sigmoid_focal_loss(torch.full((1, 1, 1), 4.0), t),
        sigmoid_focal_loss(torch.full((1, 1, 1), -4.0), t),
    )
    bce_ratio = math.log1p(math.exp(-4)) / math.log1p(math.exp(4))
    assert (easy / hard).item() < bce_ratio / 100  # focusing shrinks easy-pixel loss far more than BCE does


def test_dice_known_answers() -> None:
    t = torch.ones(1, 2, 2)
    # p = 0.5 on 4 fg pixels: 1 - (2*2 + 1) / (2 + 4 + 1) = 2/7
    assert dice_loss(torch.zeros(1, 2, 2), t).item() == pytest.approx(2 / 7, rel=1e-6)
    assert dice_loss(torch.full((1, 2, 2), 30.0), t).item() == pytest.approx(0.0, abs=1e-6)
    # empty target predicted empty is perfect, not NaN
    assert dice_loss(torch.full((1, 2, 2), -30.0), torch.zeros(1, 2, 2)).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_mask_loss_is_20_to_1() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 8, 8, generator=g)
    t = torch.rand(4, 8, 8, generator=g) > 0.3
    torch.testing.assert_close(
        mask_loss(logits, t), 20 * sigmoid_focal_loss(logits, t) + dice_loss(logits, t)
    )


def test_mask_iou_and_iou_mse_known_answers() -> None:
    logits = torch.tensor([[[5.0, 5.0, -5.0, -5.0]]]).view(1, 2, 2)  # predicts pixels 0, 1
    t = torch.tensor([[[0.0, 1.0, 1.0, 1.0]]]).view(1, 2, 2)  # inter 1, union 4
    assert mask_iou(logits, t).item() == pytest.approx(0.25)
    assert iou_mse_loss(torch.tensor([0.5]), logits, t).item() == pytest.approx(0.0625)
    assert mask_iou(torch.full((1, 2, 2), -1.0), torch.zeros(1, 2, 2)).item() == 1.0


def test_iou_target_carries_no_gradient_into_masks() -> None:
    logits = torch.randn(2, 4, 4, requires_grad=True)
    iou_mse_loss(torch.zeros(2, requires_grad=True), logits, torch.ones(2, 4, 4)).sum().backward()
    assert logits.grad is None or torch.count_nonzero(logits.grad) == 0


def test_sam_loss_backprops_only_the_best_of_three() -> None:
    gt = torch.zeros(2, 4, 4)
    gt[:, :2] = 1
    good = gt * 20 - 10  # confident and right
    logits = torch.stack([torch.zeros(2, 4, 4), good, -good], 1).requires_grad_(True)  # N=2, K=3
    iou_pred = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]], requires_grad=True)
    out = sam_loss(logits, iou_pred, gt)
    assert out.best.tolist() == [1, 1]
    assert out.actual_iou.tolist() == [1.0, 1.0]
    out.loss.backward()
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad[:, [0, 2]]) == 0  # losing masks get no mask-loss gradient
    assert torch.count_nonzero(logits.grad[:, 1]) > 0
    # IoU head supervised on all 3 masks; actual IoUs are 0 (logits 0 -> empty mask), 1, 0
    expected_iou = (
        (torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]]) - torch.tensor([0.0, 1.0, 0.0])) ** 2
    ).mean()
    expected = mask_loss(good, gt).mean() + expected_iou
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert iou_pred.grad is not None and torch.count_nonzero(iou_pred.grad) == 3  # row 0 already exact


def test_sam_loss_single_mask() -> None:
    gt = torch.ones(3, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    out = sam_loss(logits, torch.zeros(3, 1), gt)
    assert out.best.tolist() == [0, 0, 0]
    assert out.loss.item() == pytest.approx(
        (mask_loss(logits[:, 0], gt).mean() + (mask_iou(logits[:, 0], gt) ** 2).mean()).item(), rel=1e-5
    )


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        dice_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError):
        sam_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError):
        sam_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3), torch.zeros(3, 4, 4))


def test_multi_target_loss_matches_each_answer_to_its_own_output() -> None:
    from segany.train.losses import sam_loss_multi_target

    part = torch.zeros(8, 8)
    part[2:4, 2:4] = 1
    whole = torch.zeros(8, 8)
    whole[1:7, 1:7] = 1
    junk = torch.zeros(8, 8)
    junk[7, 7] = 1
    # outputs 0 = junk, 1 = whole, 2 = part (confident logits)
    logits = torch.stack([junk, whole, part])[None] * 40 - 20
    targets = torch.stack([part, whole, torch.zeros(8, 8)])[None]
    valid = torch.tensor([[True, True, False]])
    out = sam_loss_multi_target(logits, torch.zeros(1, 3), targets, valid)
    assert out.best.tolist() == [2] and out.actual_iou.item() == pytest.approx(1.0)
    assert out.mask.item() < 0.05  # both answers are found: near-zero mask loss
    # with the whole only a valid answer if marked so: the paper's loss would score the whole output at IoU 8/36
    iou_right = torch.tensor([[0.0, 1.0, 1.0]])
    good = sam_loss_multi_target(logits, iou_right, targets, valid)
    assert good.iou.item() == pytest.approx(0.0, abs=1e-6)
    only = sam_loss_multi_target(logits, iou_right, targets, torch.tensor([[True, False, False]]))
    assert only.iou.item() > 0.2  # the whole is no longer a right answer: an IoU of 1 is wrong for it
    with pytest.raises(ValueError, match="target 0"):
        sam_loss_multi_target(logits, iou_right, targets, torch.tensor([[False, True, False]]))


def test_multi_target_loss_with_one_valid_target_is_the_paper_loss() -> None:
    from segany.train.losses import sam_loss, sam_loss_multi_target

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 16, 16, generator=g) * 3
    iou = torch.rand(5, 3, generator=g)
    gt = torch.rand(5, 16, 16, generator=g) > 0.6
    targets = torch.stack([gt, gt, gt], 1)
    valid = torch.zeros(5, 3, dtype=torch.bool)
    valid[:, 0] = True
    a, b = sam_loss(logits, iou, gt), sam_loss_multi_target(logits, iou, targets, valid)
    assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-5)
    assert torch.equal(a.best, b.best)
