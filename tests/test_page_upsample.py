"""The page's mask upsampling (decode.js `upsampleMask`, run in node) against SamPredictor's: `postprocess_masks`
(bilinear to the model input, crop the padding, bilinear to the image, threshold at 0) on the same low-res logits.

The page settles runs of image pixels that read the same low-res span at once; this checks, pixel for pixel,
that it still gives SamPredictor's mask at upsampling factors from below 1 to above 6, for both orientations,
and that `maskBox` bounds the mask exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segany.modeling.sam import Sam
from segany.transforms import ResizeLongestSide

STATIC = Path(__file__).resolve().parents[1] / "segany" / "engine" / "web" / "static"

SCRIPT = """
import { readFileSync, writeFileSync } from "node:fs";
const { upsamplePlan, upsampleMask, maskBox } = await import(process.argv[2]);
const cfg = JSON.parse(readFileSync(process.argv[3], "utf8"));
const low = new Float32Array(readFileSync(process.argv[4]).buffer.slice(0));
const plan = upsamplePlan(cfg.height, cfg.width, cfg.imgSize, cfg.lowSize);
// the page's layout: 4 planes x plan.lowRows x s (the rows the image's pixels read)
const s = cfg.lowSize; const rows = plan.lowRows;
const page = new Float32Array(4 * rows * s);
for (let k = 0; k < 4; k++) page.set(low.subarray(k * s * s, k * s * s + rows * s), k * rows * s);
const out = []; const boxes = [];
for (let k = 0; k < 4; k++) { const m = upsampleMask(page, k, plan); out.push(m); boxes.push(maskBox(m, cfg.height, cfg.width)); }
const all = new Uint8Array(4 * cfg.height * cfg.width);
out.forEach((m, k) => all.set(m, k * m.length));
writeFileSync(process.argv[5], all);
writeFileSync(process.argv[6], JSON.stringify(boxes));
"""


def _node() -> str:
    from engine_harness import need

    node = shutil.which("node")
    if node is None:  # the page's build needs it too (segany/engine/web/build.sh): CI has it
        need("node", "SEGANY_REQUIRE_BROWSER", "not on PATH")
    assert node is not None
    return node


def _smooth_logits(s: int, seed: int) -> np.ndarray:
    """4 x s x s logits with blobs (real masks' structure: long runs of one sign, curved boundaries)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(4, 1, s // 8, s // 8, generator=g)
    low = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    low = low + 0.05 * torch.randn(4, 1, s, s, generator=g)
    low[3] = -1.0  # an empty mask
    low[3, 0, s // 3, s // 5] = 2.0  # ... with one positive logit
    return low[:, 0].numpy().astype(np.float32)


@pytest.mark.parametrize(
    "height,width",
    [(480, 854), (333, 500), (640, 427), (97, 1280), (3024, 4032), (1000, 7), (7, 9)],
)
def test_upsample_mask_is_the_predictors(tmp_path: Path, height: int, width: int) -> None:
    node = _node()
    img_size, low_size = 640, 160
    low = _smooth_logits(low_size, seed=height * 7 + width)
    (tmp_path / "cfg.json").write_text(
        json.dumps({"height": height, "width": width, "imgSize": img_size, "lowSize": low_size})
    )
    (tmp_path / "low.f32").write_bytes(low.tobytes())
    (tmp_path / "run.mjs").write_text(SCRIPT)
    subprocess.run(
        [node, str(tmp_path / "run.mjs"), (STATIC / "decode.js").as_uri(), str(tmp_path / "cfg.json"),
         str(tmp_path / "low.f32"), str(tmp_path / "out.u8"), str(tmp_path / "boxes.json")],
        check=True, timeout=120,
    )  # fmt: skip
    got = np.frombuffer((tmp_path / "out.u8").read_bytes(), np.uint8).reshape(4, height, width).astype(bool)
    boxes = json.loads((tmp_path / "boxes.json").read_text())

    input_size = ResizeLongestSide.get_preprocess_shape(height, width, img_size)  # SamPredictor's input size
    model = SimpleNamespace(image_size=img_size)  # all that postprocess_masks reads of the model
    want = Sam.postprocess_masks(model, torch.from_numpy(low)[None], input_size, (height, width))  # type: ignore[arg-type]
    want_np = want[0].numpy() > 0
    for k in range(4):
        assert np.array_equal(got[k], want_np[k]), f"plane {k}: {np.sum(got[k] != want_np[k])} pixels differ"
        ys, xs = np.nonzero(want_np[k])
        expect = (
            None if ys.size == 0 else [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        )
        assert boxes[k] == expect
    assert want_np[:3].any() and not want_np[:3].all(), "the test logits must give partial masks"
