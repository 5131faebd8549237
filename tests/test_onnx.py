"""The exported decoder graph (onnxruntime) against the torch path, on several aspect ratios and prompt kinds.

Measured on the tiny config: max |ONNX - torch| is about 1e-6 on mask logits, IoU predictions and low-res
logits (float32 rounding); the tests assert < 1e-4. The int8 graph is checked for running, being smaller and
still agreeing with fp32 on most pixels (random tiny weights are a hard case for quantisation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segany.build import sam_model_registry
from segany.onnx_export import INPUT_NAMES, OUTPUT_NAMES, export_decoder
from segany.predictor import SamPredictor
from segany.transforms import ResizeLongestSide

TOL = 1e-4
# The tracer warns about Python values in the graph; correctness for other sizes is what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    sam = sam_model_registry["tiny"]().eval()
    path = tmp_path_factory.mktemp("onnx") / "decoder.onnx"
    info = export_decoder(sam, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sam, sess, info


def _torch_reference(sam, emb, coords, labels, boxes, mask_input, orig):
    size = sam.prompt_encoder.input_image_size[0]
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(
            points=None if coords is None else (coords, labels), boxes=boxes, masks=mask_input
        )
        low, iou = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)[:2]
        input_size = ResizeLongestSide(size).get_preprocess_shape(*orig, size)
        masks = sam.postprocess_masks(low, input_size, orig)
    return masks.numpy(), iou.numpy(), low.numpy()


def _feeds(sam, emb, coords, labels, box, mask_input, orig):
    """Inputs as the browser builds them: points, box corners (labels 2, 3) or a padding point (-1)."""
    pts = [] if coords is None else list(zip(coords[0].tolist(), labels[0].tolist(), strict=True))
    if box is not None:
        pts += [((box[0], box[1]), 2.0), ((box[2], box[3]), 3.0)]
    else:
        pts.append(((0.0, 0.0), -1.0))
    h, w = sam.prompt_encoder.image_embedding_size
    return {
        "image_embeddings": emb.numpy(),
        "point_coords": np.array([[p for p, _ in pts]], np.float32),
        "point_labels": np.array([[lab for _, lab in pts]], np.float32),
        "mask_input": np.zeros((1, 1, 4 * h, 4 * w), np.float32)
        if mask_input is None
        else mask_input.numpy(),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(orig, np.float32),
    }


CASES = [
    *((orig, prompt) for orig in [(120, 200), (300, 77), (64, 64)]
      for prompt in ["one_point", "three_points", "box", "box_and_point", "mask_input"]),
    ((1500, 2250), "one_point"),  # SA-1B's size, the official demo's export size
]  # fmt: skip


@pytest.mark.parametrize(("orig", "prompt"), CASES)
def test_onnx_matches_torch(tiny, orig, prompt) -> None:
    sam, sess, _ = tiny
    size = sam.prompt_encoder.input_image_size[0]
    tr = ResizeLongestSide(size)
    gen = torch.Generator().manual_seed(hash((orig, prompt)) % 2**31)
    emb = torch.randn(
        1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size, generator=gen
    )
    h, w = orig
    raw = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h], [0.1 * w, 0.9 * h]], np.float32)
    n = {"one_point": 1, "three_points": 3, "box": 0, "box_and_point": 1, "mask_input": 2}[prompt]
    coords = labels = None
    if n:
        coords = torch.as_tensor(tr.apply_coords(raw[:n], orig))[None]
        labels = torch.tensor([[1.0, 0.0, 1.0][:n]])
    box = None
    if prompt.startswith("box"):
        box = tr.apply_boxes(np.array([[0.2 * w, 0.2 * h, 0.8 * w, 0.7 * h]], np.float32), orig)[0]
    mask_input = None
    if prompt == "mask_input":
        eh, ew = sam.prompt_encoder.image_embedding_size
        mask_input = torch.randn(1, 1, 4 * eh, 4 * ew, generator=gen)
    ref = _torch_reference(
        sam, emb, coords, labels, None if box is None else torch.as_tensor(box)[None], mask_input, orig
    )
    out = sess.run(None, _feeds(sam, emb, coords, labels, box, mask_input, orig))
    assert out[0].shape == (1, 4, h, w)
    for name, got, want in zip(OUTPUT_NAMES, out, ref, strict=True):
        diff = float(np.abs(got - want).max())
        assert diff < TOL, f"{name}: max abs diff {diff:.2e} (orig {orig}, {prompt})"


def test_predictor_path_matches(tiny) -> None:
    """The public predictor (set_image → predict, logits) equals the graph fed with its embedding."""
    sam, sess, _ = tiny
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)
    pred = SamPredictor(sam)
    pred.set_image(image)
    point = np.array([[70.0, 40.0]])
    masks, scores, low = pred.predict(point_coords=point, point_labels=np.array([1]), return_logits=True)
    coords = torch.as_tensor(pred.transform.apply_coords(point, image.shape[:2]), dtype=torch.float32)[None]
    feeds = _feeds(
        sam, pred.get_image_embedding(), coords, torch.tensor([[1.0]]), None, None, image.shape[:2]
    )
    out = sess.run(None, feeds)
    assert np.abs(out[0][0, 1:] - masks).max() < TOL
    assert np.abs(out[1][0, 1:] - scores).max() < TOL


def test_graph_has_dynamic_points_and_sizes(tiny) -> None:
    _, sess, info = tiny
    assert [i.name for i in sess.get_inputs()] == INPUT_NAMES
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes["point_coords"][1] == "num_points" and shapes["point_labels"][1] == "num_points"
    assert info["embedding_shape"] == [1, 32, 16, 16] and info["image_size"] == 256
    emb = np.zeros((1, 32, 16, 16), np.float32)
    for n in (1, 2, 7, 30):
        feeds = {
            "image_embeddings": emb,
            "point_coords": np.full((1, n, 2), 100.0, np.float32),
            "point_labels": np.ones((1, n), np.float32),
            "mask_input": np.zeros((1, 1, 64, 64), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([33, 47], np.float32),
        }
        masks, iou, low = sess.run(None, feeds)
        assert masks.shape == (1, 4, 33, 47) and iou.shape == (1, 4) and low.shape == (1, 4, 64, 64)
        assert np.isfinite(masks).all()


def test_int8_quantisation(tiny, tmp_path: Path) -> None:
    sam, fp32, info = tiny
    path = tmp_path / "decoder.int8.onnx"
    qinfo = export_decoder(sam, path, quantize=True)
    assert qinfo["quantized"] and (tmp_path / "decoder.int8.fp32.onnx").exists()
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}, ops
    q = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(1, 32, 16, 16, generator=gen)
    coords = torch.tensor([[[100.0, 80.0]]])
    feeds = _feeds(sam, emb, coords, torch.tensor([[1.0]]), None, None, (120, 200))
    a = fp32.run(None, feeds)[0] > 0
    b = q.run(None, feeds)[0] > 0
    agree = float((a == b).mean())
    assert agree > 0.9, f"int8 and fp32 masks agree on only {agree:.1%} of pixels"


def test_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segany.cli import export_onnx

    p = argparse.ArgumentParser()
    export_onnx.add_parser(p.add_subparsers())
    args = p.parse_args(["export-onnx", "--model", "tiny", "--out", str(tmp_path / "d.onnx")])
    assert export_onnx.run(args) == 0
    assert (tmp_path / "d.onnx").stat().st_size > 10_000
    assert '"check_masks_shape": [' in capsys.readouterr().out
