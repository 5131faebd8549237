"""The convolutional image encoder (segany's default model): SAM's contract, configs, checkpoints, training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from segany.build import TINY_CONV, SamConfig, build_sam, build_sam_from_checkpoint
from segany.checkpoint import save_safetensors
from segany.modeling import ConvImageEncoder
from segany.predictor import SamPredictor


@pytest.mark.parametrize("size", [256, 320])
def test_output_matches_the_vit_contract(size):
    enc = ConvImageEncoder(img_size=size, dims=(8, 16, 24), depths=(1, 1, 2), out_chans=32, detail_chans=2)
    out = enc(torch.randn(2, 3, size, size))
    assert out.shape == (2, 32, size // 16, size // 16) and torch.isfinite(out).all()
    assert enc.img_size == size


def test_detail_path_reaches_the_embedding_cell_of_its_pixels():
    """A change inside one 16-px cell moves that cell's embedding through the detail path even when the deep
    stride-16 stage is cut off: sub-cell detail is folded into the cell, not lost."""
    torch.manual_seed(0)
    enc = ConvImageEncoder(
        img_size=64, dims=(8, 16, 24), depths=(1, 1, 1), out_chans=16, detail_chans=2
    ).eval()
    enc.stages[2] = torch.nn.Sequential()
    with torch.no_grad():
        enc.downsample[1][1].weight.zero_()
        enc.downsample[1][1].bias.zero_()  # the stride-16 branch now outputs zeros
        x = torch.zeros(1, 3, 64, 64)
        y = x.clone()
        y[:, :, 20:24, 36:40] = 3.0  # inside cell (row 1, col 2)
        a, b = enc(x), enc(y)
    moved = (a - b).abs().amax(1)[0]
    assert moved[1, 2] > 1e-3


def test_config_validation():
    with pytest.raises(ValueError, match="encoder_type"):
        SamConfig(encoder_type="resnet")
    with pytest.raises(ValueError, match="patch_size must be 16"):
        replace(TINY_CONV, patch_size=8)
    with pytest.raises(ValueError, match="3 stages"):
        build_sam(replace(TINY_CONV, encoder_dims=(8, 16), encoder_depths=(1, 1)))


def test_checkpoint_round_trip_rebuilds_the_conv_model(tmp_path):
    torch.manual_seed(1)
    model = build_sam(TINY_CONV)
    path = tmp_path / "conv.safetensors"
    save_safetensors(path, model.state_dict(), TINY_CONV)
    assert SamConfig.from_json(TINY_CONV.to_json()) == TINY_CONV
    again = build_sam_from_checkpoint(path)
    img = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    outs = []
    for m in (model, again):
        p = SamPredictor(m)
        p.set_image(img)
        outs.append(p.predict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1])))
    assert outs[0][0].shape == (3, 70, 90)
    for x, y in zip(outs[0], outs[1], strict=True):
        np.testing.assert_array_equal(x, y)


def test_one_training_step_reaches_the_conv_encoder():
    from segany.train.prompts import simulate_interactive

    torch.manual_seed(2)
    model = build_sam(TINY_CONV).train()
    x = torch.randn(1, 3, 256, 256)
    gt = torch.zeros(2, 256, 256, dtype=torch.bool)
    gt[0, 40:120, 50:150] = True
    gt[1, 150:230, 20:90] = True
    emb = model.image_encoder(x)
    leaf = emb.detach().requires_grad_(True)
    records = simulate_interactive(
        model.prompt_encoder,
        model.mask_decoder,
        leaf,
        gt,
        generator=torch.Generator().manual_seed(0),
        n_points=2,
        n_empty=1,
        center_click_p=1.0,
        backward=lambda loss: loss.backward(),
    )
    assert len(records) == 4 and all(np.isfinite(r.loss) for r in records)
    emb.backward(leaf.grad)
    g = model.image_encoder.stem[0].weight.grad
    assert g is not None and g.abs().sum() > 0


def test_saved_embeddings_of_a_conv_model_load_back_and_are_refused_by_another(tmp_path):
    from segany.predictor import ImageEmbedding

    torch.manual_seed(3)
    p = SamPredictor(build_sam(TINY_CONV))
    p.set_image(np.zeros((40, 50, 3), np.uint8))
    p.get_embedding().save(tmp_path / "e.npz")
    emb = ImageEmbedding.load(tmp_path / "e.npz")
    p.reset_image()
    p.set_embedding(emb)
    masks = p.predict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1]))[0]
    assert masks.shape == (3, 40, 50)
    other = SamPredictor(build_sam(TINY_CONV))  # same config, other random weights
    with pytest.raises(ValueError):
        other.set_embedding(emb)
