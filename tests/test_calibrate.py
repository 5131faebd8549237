"""IoU-head calibration (issue 13, item 3): the per-token affine fit, its folding into the head's last layer,
and `segany calibrate` end to end on a tiny model and a tiny training folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from segany import sam_model_registry
from segany.train.calibrate import IouCalibration, fit_iou_calibration, fold_iou_calibration


def test_fit_recovers_a_known_affine_map_per_token():
    rng = np.random.default_rng(0)
    actual = rng.uniform(0, 1, 400)
    tokens = np.repeat(np.arange(4), 100)
    scale, shift = np.array([0.5, 2.0, 1.0, 0.25]), np.array([0.1, -0.4, 0.0, 0.3])
    predicted = (actual - shift[tokens]) / scale[tokens]  # the head is off by a known map per token
    cal = fit_iou_calibration(tokens, predicted, actual)
    np.testing.assert_allclose(cal.scale, scale, atol=1e-9)
    np.testing.assert_allclose(cal.shift, shift, atol=1e-9)
    assert cal.mae_before > 0.1 and cal.mae_after < 1e-9 and cal.masks == 400


def test_a_token_without_signal_keeps_a_positive_slope():
    tokens = np.zeros(50, dtype=int)
    predicted = np.linspace(0, 1, 50)
    actual = 1 - predicted  # anti-correlated: a negative slope would reverse the ranking
    cal = fit_iou_calibration(tokens, predicted, actual)
    assert cal.scale[0] > 0
    with pytest.raises(ValueError, match="no masks"):
        fit_iou_calibration(np.array([], dtype=int), np.array([]), np.array([]))


def test_folding_maps_every_token_score_exactly():
    torch.manual_seed(0)
    model = sam_model_registry["tiny"]().eval()
    head = model.mask_decoder.iou_prediction_head
    x = torch.randn(5, head.layers[0].in_features)
    before = head(x)
    cal = IouCalibration(
        scale=[0.5, 2.0, 1.0, 0.3], shift=[0.1, -0.2, 0.0, 0.4], masks=1, mae_before=0, mae_after=0
    )
    fold_iou_calibration(model, cal)
    after = head(x)
    expected = before * torch.tensor(cal.scale) + torch.tensor(cal.shift)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="4 outputs, the calibration 2"):
        fold_iou_calibration(model, IouCalibration([1.0, 1.0], [0.0, 0.0], 1, 0, 0))


def test_cli_writes_calibrated_weights_keeping_every_other_tensor(tmp_path, capsys):
    from segany.build import TINY
    from segany.checkpoint import GENERATOR_METADATA_KEY, save_safetensors, write_generator_defaults
    from segany.cli import main

    rng = np.random.default_rng(1)
    folder = tmp_path / "data" / "duts_tr"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            folder / "images" / f"s{i}.png"
        )
        m = np.zeros((48, 64), np.uint8)
        m[10 + i : 30 + i, 8:40] = 255
        Image.fromarray(m).save(folder / "masks" / f"s{i}.png")
    src, out = tmp_path / "tiny.safetensors", tmp_path / "cal.safetensors"
    torch.manual_seed(0)
    save_safetensors(src, sam_model_registry["tiny"]().state_dict(), TINY)
    write_generator_defaults(src, {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8})
    args = ["calibrate", "--model", "tiny", "--checkpoint", str(src), "--data", str(tmp_path / "data")]
    assert main([*args, "--images", "6", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "mean abs. error" in err and "dropped the generator thresholds" in err
    with safe_open(str(src), "pt") as a, safe_open(str(out), "pt") as b:
        changed = [k for k in a.keys() if not torch.equal(a.get_tensor(k), b.get_tensor(k))]  # noqa: SIM118
        meta = b.metadata()
    last = len(sam_model_registry["tiny"]().mask_decoder.iou_prediction_head.layers) - 1
    assert set(changed) <= {f"mask_decoder.iou_prediction_head.layers.{last}.{p}" for p in ("weight", "bias")}
    assert changed, "the head's last layer must change"
    cal = json.loads(meta["segany_iou_calibration"])
    assert len(cal["scale"]) == 4 and cal["masks"] > 0 and cal["mae_after"] <= cal["mae_before"] + 1e-9
    assert GENERATOR_METADATA_KEY not in meta
    assert main([*args[:-2], "--data", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no training folder" in capsys.readouterr().err
