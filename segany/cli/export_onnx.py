"""`segany export-onnx`: write the prompt encoder + mask decoder (+ mask postprocessing) as an ONNX graph."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = """Export the light part of SAM that runs on every click (prompt encoder, mask decoder, upsampling of the
masks to the original image size) to ONNX, with a dynamic number of points. The image embedding is not part of
it: compute it with `segany embed` or the annotation server. Inputs and outputs are listed in
segany/onnx_export.py (SAM, MobileSAM), segany/onnx_export_sam2.py (SAM 2, which also takes the encoder's
high-resolution features) and segany/onnx_export_hq.py (HQ-SAM, which also takes the image-side HQ features
computed from the encoder's early features, and returns one mask per prompt for single- and multimask output);
the graph is run once with onnxruntime after export as a check."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export-onnx", help="export the prompt encoder + mask decoder to ONNX",
                              description=HELP)  # fmt: skip
    p.add_argument(
        "--model",
        default="default",
        help="model kind: default, vit_b, vit_l, vit_h, vit_t (MobileSAM), sam2.1_hiera_* / sam2_hiera_* "
        "(SAM 2), hq_vit_b, hq_vit_l, hq_vit_h, hq_vit_tiny (HQ-SAM), tiny",
    )
    p.add_argument("--checkpoint", default=None, help="weights for --model (.safetensors or .pth)")
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--quantize", action="store_true",
                   help="dynamic int8 (QUInt8) weight quantisation; the fp32 graph is kept as OUT.fp32.onnx")  # fmt: skip
    p.add_argument("--hq-token-only", action="store_true",
                   help="HQ-SAM models: the graph returns the HQ token's mask alone (default: SAM's mask plus the "
                   "HQ token's, as the official HQ-SAM)")  # fmt: skip
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16, default 17)")


def run(args: argparse.Namespace) -> int:
    from segany.cli.extras import require

    require("export-onnx", "onnx")
    import numpy as np
    import onnxruntime as ort

    from segany.build import check_kind, sam_model_registry
    from segany.cli.errors import CommandError
    from segany.cli.model_args import model_errors
    from segany.modeling.sam2 import Sam2
    from segany.onnx_export import dummy_inputs, export_decoder
    from segany.onnx_export_hq import export_hq_decoder, hq_dummy_inputs
    from segany.onnx_export_sam2 import export_sam2_decoder, sam2_dummy_inputs

    with model_errors():  # a wrong --model or --checkpoint: one error line (segany.cli), nothing written
        check_kind(args.model)
        sam = sam_model_registry[args.model](checkpoint=args.checkpoint).eval()
    hq = bool(getattr(sam.mask_decoder, "hq", False))
    if args.hq_token_only and not hq:
        raise CommandError(f"--hq-token-only needs an HQ-SAM model (hq_vit_*), not --model {args.model}")
    t0 = time.perf_counter()
    if isinstance(sam, Sam2):
        info = export_sam2_decoder(sam, args.out, opset=args.opset, quantize=args.quantize)
        dummy = sam2_dummy_inputs(sam)
    elif hq:
        info = export_hq_decoder(
            sam, args.out, hq_token_only=args.hq_token_only, opset=args.opset, quantize=args.quantize
        )
        dummy = hq_dummy_inputs(sam)
    else:
        info = export_decoder(sam, args.out, opset=args.opset, quantize=args.quantize)
        dummy = dummy_inputs(sam)
    info["export_seconds"] = round(time.perf_counter() - t0, 2)
    sess = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy().astype(np.float32) for k, v in dummy.items()}
    t0 = time.perf_counter()
    masks = sess.run(None, feeds)[0]
    info["check_run_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    info["check_masks_shape"] = list(masks.shape)
    print(json.dumps(info, indent=2))
    return 0
