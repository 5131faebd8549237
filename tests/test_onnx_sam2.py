"""SAM 2's exported decoder graph (onnxruntime) against `SamPredictor` on the same image, prompts and weights.

A depth-reduced Hiera-T SAM 2.1 at the real 1024² input (every state-dict tensor randomised, `oracle_sam2`), two
non-square images that are not multiples of 16, and the prompts the page sends: one point, fg+bg points, a box,
box + background point, a mask prompt from the previous low-res logits. The graph returns all four mask tokens:
tokens 1-3 are compared with ``multimask_output=True``, token 0 with the single mask (dynamic fallback off).

Bar: binary masks identical except where the logit is within 1e-3 of the threshold; logits and IoU within 1e-4 times
the largest logit magnitude (random weights give logits of magnitude ~25). Reached (printed with -s): low-res logits
and IoU ~3e-5, image-sized logits ~3e-4 (onnxruntime's bilinear resize places its samples slightly differently).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from oracle_sam2 import random_state_dict
from test_sam2_parity import _image

from segany import SamPredictor
from segany.build_sam2 import SAM2_CONFIGS, build_sam2
from segany.onnx_export_sam2 import (
    SAM2_INPUT_NAMES,
    SAM2_OUTPUT_NAMES,
    export_sam2_decoder,
    sam2_image_inputs,
)

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    config = replace(SAM2_CONFIGS["sam2.1_hiera_tiny"], stages=(1, 1, 2, 1), global_att_blocks=(3,))
    sam = build_sam2(config)
    sam.load_state_dict(random_state_dict(sam, seed=11))
    path = tmp_path_factory.mktemp("onnx") / "sam2_decoder.onnx"
    info = export_sam2_decoder(sam, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sam, sess, info, {}


def _predictor(exported, size: tuple[int, int]) -> SamPredictor:
    """One encoded predictor per image size for the module."""
    sam, _, _, cache = exported
    if size not in cache:
        cache[size] = SamPredictor(sam)
        cache[size].set_image(_image(*size, seed=sum(size)))
    return cache[size]


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
    """What a caller of the graph builds: box corners (labels 2, 3) first, then the points, then SAM 2's padding
    point, all in the model's input frame."""
    sam = predictor.model
    hw = predictor.original_size
    coords, labels = [], []
    if "box" in prompt:
        coords += predictor.transform.apply_boxes(prompt["box"][None], hw).reshape(2, 2).tolist()
        labels += [2.0, 3.0]
    if "point_coords" in prompt:
        coords += predictor.transform.apply_coords(prompt["point_coords"], hw).tolist()
        labels += prompt["point_labels"].astype(float).tolist()
    coords.append([0.0, 0.0])
    labels.append(-1.0)
    side = 4 * sam.prompt_encoder.image_embedding_size[0]
    feeds = {
        k: v.numpy() for k, v in sam2_image_inputs(predictor.features, predictor.interm_features, sam).items()
    }
    return {
        **feeds,
        "point_coords": np.array([coords], np.float32),
        "point_labels": np.array([labels], np.float32),
        "mask_input": np.zeros((1, 1, side, side), np.float32)
        if mask_input is None
        else mask_input[None, None],
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(hw, np.float32),
    }


def _check(kind: str, graph: np.ndarray, torch_out: np.ndarray) -> float:
    d = float(np.abs(graph - torch_out).max())
    print(f"{kind}: max abs diff {d:.3g} (largest magnitude {float(np.abs(torch_out).max()):.3g})")
    assert d < TOL * max(1.0, float(np.abs(torch_out).max())), kind
    return d


@pytest.mark.parametrize("size", [(301, 453), (517, 203)])
@pytest.mark.parametrize("name", ["one_point", "fg_bg_points", "box", "box_point", "mask_input"])
def test_onnx_matches_predictor(exported, size, name) -> None:
    sess = exported[1]
    predictor = _predictor(exported, size)
    h, w = size
    prompts = _prompts(h, w)
    mask_input = None
    prompt = prompts["one_point"] if name == "mask_input" else prompts[name]
    if name == "mask_input":  # the previous call's best low-res logits, with a new point
        _, iou, low = predictor.predict(**prompt)
        mask_input = low[int(np.argmax(iou))]
        prompt = dict(
            point_coords=np.array([[w * 0.4, h * 0.55], [w * 0.6, h * 0.3]]), point_labels=np.array([1, 0])
        )
    masks, iou, low, obj = sess.run(None, _feeds(predictor, prompt, mask_input))
    assert masks.shape == (1, 4, h, w) and obj.shape == (1, 1)
    for tokens, kw in (
        (slice(1, 4), dict(multimask_output=True)),
        (slice(0, 1), dict(multimask_output=False)),
    ):
        logits, t_iou, t_low = predictor.predict(
            **prompt,
            mask_input=None if mask_input is None else mask_input[None],
            return_logits=True,
            dynamic_multimask=False if not kw["multimask_output"] else None,
            **kw,
        )
        g = masks[0, tokens]
        _check("logits", g, logits)
        _check("iou", iou[0, tokens], t_iou)
        _check("low-res logits", low[0, tokens], t_low)
        differ = (g > 0) != (logits > 0)
        assert not (differ & (np.abs(logits) > 1e-3)).any()


def test_graph_names(exported) -> None:
    _, sess, info, _ = exported
    assert [i.name for i in sess.get_inputs()] == SAM2_INPUT_NAMES == info["inputs"]
    assert [o.name for o in sess.get_outputs()] == SAM2_OUTPUT_NAMES
    assert info["high_res_shapes"] == [[1, 32, 256, 256], [1, 64, 128, 128]]
