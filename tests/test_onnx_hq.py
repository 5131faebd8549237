"""HQ-SAM's exported decoder graph (onnxruntime) against `SamPredictor` on the same image, prompts and weights.

A tiny HQ-SAM (TINY with the HQ token, every state-dict tensor randomised by `oracle_family.random_state_dict`),
two non-square images that are not multiples of 16, the prompts the page sends (one point, fg+bg points, a box,
box + background point, a mask prompt from the previous low-res logits), exported with ``hq_token_only`` off (the
official default) and on. Graph channel 0 is compared with ``multimask_output=False``, channel 1 with
``multimask_output=True`` (HQ-SAM returns one mask for both: the best-scored of SAM's three plus the HQ token's;
with weight seed 6 the best is token 1, 2 or 3 depending on the case, so the graph's selection is exercised).

Bar: binary masks identical except where the logit is within 1e-3 of the threshold; logits and IoU within 1e-4 times
the largest logit magnitude. Reached (printed with -s): low-res logits 3e-6, IoU 4e-7, image-sized logits 2.4e-5
(onnxruntime's bilinear resize), on logits of magnitude ~5.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from oracle_family import random_state_dict

from segany import SamPredictor
from segany.build import TINY, build_sam
from segany.onnx_export import SamDecoderOnnx
from segany.onnx_export_hq import HQ_INPUT_NAMES, HQ_OUTPUT_NAMES, export_hq_decoder, hq_image_inputs

TOL = 1e-4
SIZES = [(133, 301), (250, 97)]
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 17.0) + np.cos(yy / 23.0)) * 60 + 128
    return np.clip(base[..., None] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def hq(tmp_path_factory: pytest.TempPathFactory):
    sam = build_sam(replace(TINY, hq_token=True)).eval()
    sam.load_state_dict(random_state_dict(sam, seed=6))
    out = tmp_path_factory.mktemp("onnx")
    sessions, infos = {}, {}
    for only in (False, True):
        infos[only] = export_hq_decoder(sam, out / f"hq_{only}.onnx", hq_token_only=only)
        sessions[only] = ort.InferenceSession(infos[only]["path"], providers=["CPUExecutionProvider"])
    predictors = {}
    for size in SIZES:
        predictors[size] = SamPredictor(sam)
        predictors[size].set_image(_image(*size, seed=sum(size)))
    return sam, sessions, infos, predictors


def _prompts(h: int, w: int) -> dict[str, dict]:
    box = np.array([w * 0.15, h * 0.2, w * 0.8, h * 0.85])
    return {
        "one_point": dict(point_coords=np.array([[w * 0.4, h * 0.55]]), point_labels=np.array([1])),
        "fg_bg_points": dict(
            point_coords=np.array([[w * 0.3, h * 0.3], [w * 0.7, h * 0.6]]), point_labels=np.array([1, 0])
        ),
        "box": dict(box=box),
        "box_point": dict(box=box, point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([0])),
    }


def _feeds(predictor: SamPredictor, prompt: dict, mask_input: np.ndarray | None) -> dict[str, np.ndarray]:
    """What a caller of the graph builds: the points, then the box corners (labels 2, 3) or SAM's padding point,
    all in the model's input frame, as SAM's prompt encoder orders them."""
    sam = predictor.model
    hw = predictor.original_size
    coords, labels = [], []
    if "point_coords" in prompt:
        coords += predictor.transform.apply_coords(prompt["point_coords"], hw).tolist()
        labels += prompt["point_labels"].astype(float).tolist()
    if "box" in prompt:
        coords += predictor.transform.apply_boxes(prompt["box"][None], hw).reshape(2, 2).tolist()
        labels += [2.0, 3.0]
    else:
        coords.append([0.0, 0.0])
        labels.append(-1.0)
    side = 4 * sam.prompt_encoder.image_embedding_size[0]
    assert predictor.features is not None and predictor.interm_features is not None
    image = hq_image_inputs(predictor.features, predictor.interm_features, sam)
    return {
        **{k: v.numpy() for k, v in image.items()},
        "point_coords": np.array([coords], np.float32),
        "point_labels": np.array([labels], np.float32),
        "mask_input": np.zeros((1, 1, side, side), np.float32)
        if mask_input is None
        else mask_input[None, None],
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(hw, np.float32),
    }


def _check(kind: str, graph: np.ndarray, torch_out: np.ndarray) -> float:
    assert graph.shape == torch_out.shape, kind
    d = float(np.abs(graph - torch_out).max())
    print(f"{kind}: max abs diff {d:.3g} (largest magnitude {float(np.abs(torch_out).max()):.3g})")
    assert d < TOL * max(1.0, float(np.abs(torch_out).max())), kind
    return d


@pytest.mark.parametrize("hq_token_only", [False, True])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["one_point", "fg_bg_points", "box", "box_point", "mask_input"])
def test_onnx_matches_predictor(hq, size, name, hq_token_only) -> None:
    _, sessions, _, predictors = hq
    predictor = predictors[size]
    h, w = size
    prompts = _prompts(h, w)
    mask_input = None
    prompt = prompts["one_point" if name == "mask_input" else name]
    if name == "mask_input":  # the previous call's low-res logits, with a new point
        _, _, low = predictor.predict(**prompt, hq_token_only=hq_token_only)
        mask_input = low[0]
        prompt = dict(
            point_coords=np.array([[w * 0.4, h * 0.55], [w * 0.6, h * 0.3]]), point_labels=np.array([1, 0])
        )
    masks, iou, low = sessions[hq_token_only].run(None, _feeds(predictor, prompt, mask_input))
    assert masks.shape == (1, 2, h, w) and iou.shape == (1, 2) and low.shape == (1, 2, 64, 64)
    for channel, multimask in ((0, False), (1, True)):
        logits, t_iou, t_low = predictor.predict(
            **prompt,
            mask_input=None if mask_input is None else mask_input[None],
            multimask_output=multimask,
            return_logits=True,
            hq_token_only=hq_token_only,
        )
        g = masks[0, channel : channel + 1]
        _check("logits", g, logits)
        _check("iou", iou[0, channel : channel + 1], t_iou)
        _check("low-res logits", low[0, channel : channel + 1], t_low)
        differ = (g > 0) != (logits > 0)
        assert not (differ & (np.abs(logits) > 1e-3)).any()


def test_graph_names_and_cli(hq, tmp_path, capsys) -> None:
    from segany.cli import export_onnx
    from segany.cli.errors import CommandError

    sam, sessions, infos, _ = hq
    assert [i.name for i in sessions[False].get_inputs()] == HQ_INPUT_NAMES == infos[False]["inputs"]
    assert [o.name for o in sessions[False].get_outputs()] == HQ_OUTPUT_NAMES
    assert infos[False]["hq_features_shape"] == [1, 4, 64, 64] and infos[True]["hq_token_only"]
    with pytest.raises(ValueError, match="export_hq_decoder"):  # the plain graph would drop the HQ token
        SamDecoderOnnx(sam)

    p = argparse.ArgumentParser()
    export_onnx.add_parser(p.add_subparsers())
    out = tmp_path / "d.onnx"
    args = p.parse_args(["export-onnx", "--model", "hq_vit_tiny", "--out", str(out), "--hq-token-only"])
    assert export_onnx.run(args) == 0  # built with its initial weights (no --checkpoint)
    assert '"hq_token_only": true' in capsys.readouterr().out and out.exists()
    args = p.parse_args(
        ["export-onnx", "--model", "tiny", "--out", str(tmp_path / "e.onnx"), "--hq-token-only"]
    )
    with pytest.raises(CommandError, match="--hq-token-only needs an HQ-SAM model"):
        export_onnx.run(args)
    assert not (tmp_path / "e.onnx").exists()
