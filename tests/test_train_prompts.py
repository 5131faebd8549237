"""Properties of the simulated interactive prompts."""

from __future__ import annotations

import pytest
import torch

from segany.build import TINY, build_sam
from segany.train.prompts import (
    RoundRecord,
    jitter_boxes,
    masks_to_boxes,
    noisy_boxes,
    round_schedule,
    sample_error_points,
    sample_foreground_points,
    simulate_interactive,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: with 2 threads on a shared 2-core machine, spinning threads cost 20x the work itself
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _blobs(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.rand(n, 2, generator=g) * size * 0.6 + size * 0.2
    r = torch.rand(n, generator=g) * size * 0.2 + 3
    return ((xx - c[:, 0, None, None]) ** 2 + (yy - c[:, 1, None, None]) ** 2) < r[:, None, None] ** 2


def _run_with_backward(
    sam: torch.nn.Module, emb: torch.Tensor, gt: torch.Tensor, seed: int, **kw: object
) -> tuple[list[RoundRecord], list[float]]:
    """One seeded simulation that back-propagates each decoder call's loss; also returns those losses in order."""
    calls: list[float] = []

    def backward(loss: torch.Tensor) -> None:
        calls.append(float(loss.detach()))
        loss.backward()

    g, sg = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    rec = simulate_interactive(
        sam.prompt_encoder, sam.mask_decoder, emb, gt, None, g, sg, backward=backward, **kw
    )
    return rec, calls


def test_foreground_points_inside_masks() -> None:
    gt = _blobs(32, 64, 0)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        p = sample_foreground_points(gt, g)
        assert gt[torch.arange(32), p[:, 1], p[:, 0]].all()


def test_foreground_points_are_uniform() -> None:
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, 1, 1] = gt[0, 2, 3] = True
    g = torch.Generator().manual_seed(0)
    hits = torch.stack([sample_foreground_points(gt, g)[0] for _ in range(400)])
    share = (hits[:, 0] == 1).float().mean().item()
    assert 0.4 < share < 0.6


def test_error_points_lie_in_the_error_region_with_the_right_label() -> None:
    gt = _blobs(64, 48, 2)
    pred = torch.roll(gt, shifts=(3, 2), dims=(1, 2))
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        p, lbl = sample_error_points(pred, gt, g)
        i = torch.arange(64)
        in_gt = gt[i, p[:, 1], p[:, 0]]
        in_pred = pred[i, p[:, 1], p[:, 0]]
        assert (in_gt ^ in_pred).all()  # inside the error region
        assert (lbl == in_gt.long()).all()  # positive on a miss, negative on a false alarm
    assert set(lbl.tolist()) == {0, 1}


def test_error_points_on_a_perfect_prediction_are_positive_foreground() -> None:
    gt = _blobs(4, 32, 4)
    p, lbl = sample_error_points(gt.clone(), gt, torch.Generator().manual_seed(0))
    assert lbl.tolist() == [1, 1, 1, 1]
    assert gt[torch.arange(4), p[:, 1], p[:, 0]].all()


def test_masks_to_boxes_is_inclusive() -> None:
    gt = torch.zeros(1, 10, 12, dtype=torch.bool)
    gt[0, 2:5, 3:9] = True
    assert masks_to_boxes(gt).tolist() == [[3.0, 2.0, 8.0, 4.0]]


@pytest.mark.parametrize(("side", "expected_std"), [(50, 5.0), (600, 20.0)])
def test_box_noise_is_ten_percent_capped_at_20px(side: int, expected_std: float) -> None:
    boxes = torch.tensor([[50.0, 50.0, 50.0 + side, 50.0 + side]]).repeat(20000, 1)
    noise = jitter_boxes(boxes, torch.Generator().manual_seed(0)) - boxes
    assert torch.allclose(noise.std(0), torch.full((4,), expected_std), rtol=0.03)
    assert noise.mean(0).abs().max() < 0.05 * expected_std


def test_noisy_boxes_stay_in_bounds_and_ordered() -> None:
    boxes = torch.tensor([[37.0, 0.0, 39.0, 2.0]]).repeat(
        200, 1
    )  # tiny box at the corner: noise pushes it out
    b = jitter_boxes(boxes, torch.Generator().manual_seed(0), fraction=5.0, cap_px=20, bounds=(40, 40))
    assert (b >= 0).all() and (b <= 39).all()
    assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
    gt = torch.zeros(3, 40, 40, dtype=torch.bool)
    gt[:, 0:3, 37:40] = True
    nb = noisy_boxes(gt, torch.Generator().manual_seed(0))
    assert (nb >= 0).all() and (nb <= 39).all()


def test_round_schedule_is_8_points_plus_2_empty() -> None:
    g = torch.Generator().manual_seed(0)
    positions = set()
    for _ in range(50):
        s = round_schedule(g)
        assert len(s) == 10 and sum(s) == 8 and s[-1] is False
        positions.add(s[:-1].index(False))
    assert len(positions) > 4  # the inner empty round moves around


def test_simulate_interactive_runs_11_rounds_and_reaches_the_encoder() -> None:
    torch.manual_seed(0)
    sam = build_sam(TINY).train()
    image = torch.randn(1, 3, 256, 256)
    emb = sam.image_encoder(image)
    leaf = emb.detach().requires_grad_(True)
    gt = _blobs(6, 256, 5)
    rec, calls = _run_with_backward(sam, leaf, gt, seed=0)
    assert len(rec) == 11
    assert all(0.0 <= r.iou <= 1.0 and r.loss > 0 for r in rec)
    assert 11 <= len(calls) <= 22  # one or two prompt groups per round
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    emb.backward(leaf.grad)
    assert sam.image_encoder.patch_embed.proj.weight.grad is not None

    # same seeds -> same rounds
    rec2 = simulate_interactive(
        sam.prompt_encoder,
        sam.mask_decoder,
        leaf.detach(),
        gt,
        None,
        torch.Generator().manual_seed(0),
        torch.Generator().manual_seed(0),
    )
    assert [r.loss for r in rec2] == pytest.approx([r.loss for r in rec], rel=1e-5)


def test_simulate_rejects_wrong_frame() -> None:
    sam = build_sam(TINY)
    with pytest.raises(ValueError):
        simulate_interactive(
            sam.prompt_encoder,
            sam.mask_decoder,
            torch.zeros(1, 32, 16, 16),
            torch.ones(2, 128, 128, dtype=torch.bool),
        )


def test_masks_of_several_images_in_one_call_match_one_image_per_call() -> None:
    # the same image twice: batching its masks over two embedding rows must give what one shared row gives
    torch.manual_seed(0)
    sam = build_sam(TINY).eval()
    with torch.no_grad():
        emb = sam.image_encoder(torch.randn(1, 3, 256, 256))
    gt = _blobs(4, 256, 7)

    def run(e: torch.Tensor, index: torch.Tensor | None) -> list[float]:
        rec = simulate_interactive(
            sam.prompt_encoder,
            sam.mask_decoder,
            e,
            gt,
            index,
            torch.Generator().manual_seed(3),
            torch.Generator().manual_seed(3),
            n_points=3,
            n_empty=1,
        )
        return [r.loss for r in rec] + [r.iou for r in rec]

    shared = run(emb, None)
    batched = run(torch.cat([emb, emb]), torch.tensor([0, 1, 0, 1]))
    assert batched == pytest.approx(shared, rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="image_index"):
        run(torch.cat([emb, emb]), None)


def test_interior_error_point_is_the_centre_of_the_largest_error() -> None:
    from segany.train.prompts import interior_error_points

    gt = torch.zeros(2, 32, 32, dtype=torch.bool)
    gt[:, 4:15, 10:21] = True  # an 11 x 11 object
    pred = torch.zeros_like(gt)
    pred[1] = gt[1]
    pred[1, 20:27, 2:9] = True  # false alarm, 7 x 7, the only error of mask 1
    pts = interior_error_points(pred, gt, stride=4)
    # miss: the object's centre cell (row 9, col 15); false alarm: its centre cell (row 23, col 5); x4 + 2
    assert pts.tolist() == [[15 * 4 + 2, 9 * 4 + 2], [5 * 4 + 2, 23 * 4 + 2]]


def test_centre_clicks_follow_the_evaluation_protocol_in_the_simulation() -> None:
    """With ``center_click_p = 1`` every corrective click lands on the interior of the error, with the truth's
    label there; the run stays finite and reproducible."""
    torch.manual_seed(0)
    model = build_sam(TINY)
    gt = _blobs(3, 256, seed=5)
    emb = torch.randn(1, 32, 16, 16)
    runs = [
        simulate_interactive(
            model.prompt_encoder,
            model.mask_decoder,
            emb,
            gt,
            generator=torch.Generator().manual_seed(1),
            schedule_generator=torch.Generator().manual_seed(2),
            n_points=3,
            n_empty=0,
            center_click_p=1.0,
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0]) == 4


def test_positional_attention_init_makes_clicks_attend_to_their_place() -> None:
    """After the init every decoder attention has tied q/k projections scaled by the gain, so comparing a
    click's Fourier encoding with the image's peaks at the cell under the click (the untied default does not)."""
    from segany.train.trainer import positional_attention_init

    clicks = [(5, 11), (0, 0), (15, 3), (8, 8), (12, 14)]

    def hits(tied: bool) -> int:
        n = 0
        for seed in range(5):
            torch.manual_seed(seed)
            model = build_sam(TINY)
            dec = model.mask_decoder
            if tied:
                before = dec.transformer.final_attn_token_to_image.q_proj.weight.clone()
                assert positional_attention_init(dec, 3.0) == 3 * len(dec.transformer.layers) + 1
                attn = dec.transformer.final_attn_token_to_image
                torch.testing.assert_close(attn.q_proj.weight, 3.0 * before)
                torch.testing.assert_close(attn.k_proj.weight, attn.q_proj.weight)
            cross = dec.transformer.layers[0].cross_attn_token_to_image
            grid = model.prompt_encoder.get_dense_pe().flatten(2)[0].T  # 256 cells x C
            with torch.no_grad():
                for row, col in clicks:
                    q = cross.q_proj.weight @ grid[row * 16 + col]
                    logits = grid @ cross.k_proj.weight.T @ q
                    pr, pc = divmod(int(logits.argmax()), 16)
                    n += max(abs(pr - row), abs(pc - col)) <= 1
        return n

    assert hits(tied=True) >= 20  # 23 / 25 when written
    assert hits(tied=False) <= 5  # 0 / 25


def test_single_mask_first_weight_trains_token_0_on_one_point_only_when_asked() -> None:
    """The paper leaves mask token 0 untrained on a single point; `single_mask_first_weight` adds ``weight *`` its
    loss to the point-first group's first call (the box-first group, already single-mask, is unchanged)."""
    torch.manual_seed(0)
    sam = build_sam(TINY).train()
    emb = sam.image_encoder(torch.randn(1, 3, 256, 256)).detach()
    gt = _blobs(8, 256, 3)
    hyper0 = sam.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight

    def first_round(weight: float) -> tuple[float, list[float], torch.Tensor]:
        sam.zero_grad(set_to_none=True)
        rec, calls = _run_with_backward(
            sam, emb, gt, seed=4, n_points=0, n_empty=0, single_mask_first_weight=weight
        )
        assert hyper0.grad is not None
        return rec[0].loss, calls, hyper0.grad.clone()

    loss0, calls0, grad0 = first_round(0.0)
    loss1, calls1, grad1 = first_round(1.0)
    assert len(calls0) == len(calls1) == 2  # a box-first and a point-first group
    box_call, point_call = 0, 1  # groups run box-first, then point-first
    assert calls1[box_call] == pytest.approx(calls0[box_call], rel=1e-6)
    assert calls1[point_call] > calls0[point_call] * 1.2  # token 0's loss was added to the point-first call
    assert not torch.allclose(grad0, grad1)  # and token 0's hypernetwork gets its gradient
    assert loss1 == pytest.approx(loss0, rel=1e-6)  # the logged round loss stays the paper's


def test_background_points_are_outside_the_mask_near_it() -> None:
    from segany.train.prompts import background_points

    gt = torch.zeros(3, 64, 64, dtype=torch.bool)
    gt[0, 20:30, 20:30] = True
    gt[1, 0:40, 10:50] = True
    gt[2] = True  # no background at all: falls back to its own foreground
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = background_points(gt, g)
        assert not gt[0, p[0, 1], p[0, 0]] and not gt[1, p[1, 1], p[1, 0]]
        # within the box grown by a quarter of its side + 8 px
        assert 20 - 10.5 <= p[0, 0] <= 29 + 10.5 and 20 - 10.5 <= p[0, 1] <= 29 + 10.5
        assert gt[2, p[2, 1], p[2, 0]]


def test_nested_targets_are_the_masks_holding_the_click() -> None:
    from segany.train.prompts import nested_targets

    person = torch.zeros(16, 16, dtype=torch.bool)
    person[2:14, 4:12] = True
    shirt = torch.zeros_like(person)
    shirt[5:9, 4:12] = True
    tree = torch.zeros_like(person)
    tree[0:4, 12:16] = True
    twin = person.clone()
    twin[13, 4] = False  # a near-duplicate of the person: the same answer, not a second one
    gt_low = torch.stack([shirt, person])
    others = torch.stack([torch.stack([person, tree, twin]), torch.stack([shirt, tree, twin])])
    clicks = torch.tensor([[6 * 4 + 1, 6 * 4 + 1], [6 * 4 + 1, 6 * 4 + 1]])  # cell (6, 6): shirt and person
    targets, valid = nested_targets(gt_low, others, clicks, 4)
    assert targets.shape == (2, 3, 16, 16) and valid.tolist() == [[True, True, True], [True, True, False]]
    assert torch.equal(targets[0, 0], shirt) and torch.equal(targets[1, 0], person)
    assert {int(targets[0, k].sum()) for k in (1, 2)} == {int(person.sum()), int(twin.sum())}
    assert torch.equal(targets[1, 1], shirt)  # the person's second answer is the shirt, not the far tree
    far = torch.tensor([[1, 1], [1, 1]])  # a click on the background: no other mask holds it
    _, valid = nested_targets(gt_low, others, far, 4)
    assert valid[:, 1:].sum() == 0


def test_nested_answers_reach_the_loss_only_on_the_first_click() -> None:
    torch.manual_seed(0)
    sam = build_sam(TINY).train()
    emb = sam.image_encoder(torch.randn(1, 3, 256, 256)).detach()
    gt = _blobs(4, 256, 3)
    big = torch.zeros(4, 2, 64, 64, dtype=torch.bool)
    big[:, 0] = True  # a whole-image mask holds every click: a second right answer everywhere
    kw = dict(n_points=2, n_empty=0)
    plain, calls_plain = _run_with_backward(sam, emb.clone().requires_grad_(True), gt, seed=1, **kw)
    nested, calls_nested = _run_with_backward(
        sam, emb.clone().requires_grad_(True), gt, seed=1, others=big, **kw
    )
    assert len(calls_plain) == len(calls_nested)
    # only the first round's point group changes (its loss averages over two targets); later rounds are the same
    assert calls_nested[0] != pytest.approx(calls_plain[0]) or calls_nested[1] != pytest.approx(
        calls_plain[1]
    )
    assert [r.loss for r in nested[1:]] == pytest.approx([r.loss for r in plain[1:]], rel=1e-4)
    with pytest.raises(ValueError, match="loss resolution"):
        _run_with_backward(sam, emb, gt, seed=1, others=big[..., :32], **kw)


def test_background_clicks_enter_the_simulation() -> None:
    torch.manual_seed(0)
    sam = build_sam(TINY).eval()
    emb = sam.image_encoder(torch.randn(1, 3, 256, 256)).detach()
    gt = _blobs(6, 256, 4)
    seen: list[torch.Tensor] = []
    orig = sam.prompt_encoder.forward

    def spy(points=None, boxes=None, masks=None):  # type: ignore[no-untyped-def]
        if points is not None:
            seen.append(points[1].clone())
        return orig(points=points, boxes=boxes, masks=masks)

    sam.prompt_encoder.forward = spy  # type: ignore[method-assign]
    simulate_interactive(
        sam.prompt_encoder,
        sam.mask_decoder,
        emb,
        gt,
        None,
        torch.Generator().manual_seed(0),
        torch.Generator().manual_seed(0),
        n_points=3,
        n_empty=0,
        background_click_p=1.0,
    )
    last = seen[-1]
    assert last.shape[1] >= 3 and (last[:, 1:] == 0).all()  # every corrective click was a background click
