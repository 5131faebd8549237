"""`segany segment`: prompt the model on one image; write one PNG per mask, an overlay and a JSON."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from segany.cli.errors import CommandError
from segany.cli.model_args import add_model_args, add_refine_arg, model_from_args, predictor_from_args


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from e
    if len(vals) not in n:
        raise argparse.ArgumentTypeError(f"{what} needs {' or '.join(map(str, n))} numbers, got {text!r}")
    return vals


def _point(text: str) -> list[float]:
    return _floats(text, (2, 3), "--point X,Y[,LABEL]")


def _box(text: str) -> list[float]:
    return _floats(text, (4,), "--box X0,Y0,X1,Y1")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "segment",
        help="segment one image from point/box prompts",
        description="Segment one image from prompts. Writes mask_<i>.png (one per mask), overlay.png "
        "(the image with coloured masks and the prompts) and masks.json (scores, boxes, COCO RLE masks).",
    )
    p.add_argument("image", help="image file (JPEG, PNG, BMP, TIFF, WebP, …)")
    p.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        help="X,Y[,LABEL] in image pixels; LABEL 1 = foreground (default), 0 = background. Repeat for more. "
        "Negative numbers are fine (--point -3,20), but are outside the image.",
    )
    p.add_argument(
        "--box",
        type=_box,
        action="append",
        default=[],
        help="X0,Y0,X1,Y1 box in image pixels. Repeat for several boxes (each segmented separately).",
    )
    p.add_argument("--single", action="store_true", help="return one mask instead of three (ambiguity off)")
    p.add_argument(
        "--hq-token-only",
        action="store_true",
        help="HQ-SAM models (hq_vit_*): the HQ token's mask alone (default, as the official: SAM's best mask plus "
        "the HQ token's)",
    )
    p.add_argument(
        "--embedding", default=None, help="cache file from `segany embed`: loaded if present, else written"
    )
    p.add_argument("--out", required=True, help="output folder")
    add_model_args(p)
    add_refine_arg(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from segany.images import load_image
    from segany.masks.rle import encode_coco_rle
    from segany.overlay import render_overlay
    from segany.predictor import EmbeddingError, ImageEmbedding

    if not args.point and not args.box:
        raise CommandError("give at least one --point or --box")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder")
    t0 = time.perf_counter()
    image = load_image(args.image)
    # Before the model is even built: a bad prompt fails in a second, not after the encoder.
    check_prompts(args.point, args.box, image.shape[1], image.shape[0])
    model = model_from_args(args)
    if args.hq_token_only and not getattr(model, "is_hq", False):
        raise CommandError(f"--hq-token-only needs an HQ-SAM model (hq_vit_*), not --model {args.model}")
    predictor = predictor_from_args(model, args)
    t1 = time.perf_counter()
    cache = Path(args.embedding) if args.embedding else None
    if cache is not None and cache.exists():
        try:
            predictor.set_embedding(ImageEmbedding.load(cache), image)
        except EmbeddingError as e:
            raise CommandError(
                f"--embedding {cache} cannot be used: {e} (delete the file to encode the image again)"
            ) from e
        print(f"embedding loaded from {cache}")
    else:
        print(f"encoding {image.shape[1]}×{image.shape[0]} image …", flush=True)
        predictor.set_image(image)
        if cache is not None:
            predictor.get_embedding().save(cache)
    t2 = time.perf_counter()

    coords = np.array([p[:2] for p in args.point]) if args.point else None
    labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in args.point]) if args.point else None
    boxes = np.array(args.box) if args.box else None
    masks, scores, _ = predictor.predict(
        point_coords=coords,
        point_labels=labels,
        box=boxes,
        multimask_output=not args.single,
        hq_token_only=args.hq_token_only,
    )
    t3 = time.perf_counter()
    if masks.ndim == 3:  # one prompt: C×H×W → 1×C×H×W
        masks, scores = masks[None], scores[None]
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty folder

    records: list[dict[str, Any]] = []
    flat = []
    for k in range(masks.shape[0]):
        order = np.argsort(-scores[k])
        for rank, i in enumerate(order):
            m = masks[k, i]
            name = f"mask_{rank}.png" if masks.shape[0] == 1 else f"box{k}_mask_{rank}.png"
            Image.fromarray((m * 255).astype(np.uint8)).save(out / name)
            ys, xs = np.nonzero(m)
            bbox = (
                [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
                if xs.size
                else [0, 0, 0, 0]
            )
            rle = encode_coco_rle(m)
            records.append(
                {
                    "file": name,
                    "prompt": k,
                    "output_index": int(i),
                    "predicted_iou": float(scores[k, i]),
                    "area": int(m.sum()),
                    "bbox": bbox,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"]},
                }
            )
            flat.append(m)
    best = [masks[k, int(np.argmax(scores[k]))] for k in range(masks.shape[0])]
    overlay = render_overlay(image, best)
    _draw_prompts(overlay, args.point, args.box)
    Image.fromarray(overlay).save(out / "overlay.png")
    meta = {
        "image": str(args.image),
        "size": [int(image.shape[0]), int(image.shape[1])],
        "model": args.model,
        "checkpoint": args.checkpoint,
        "points": args.point,
        "boxes": args.box,
        "mask_refiner": repr(predictor.refiner) if predictor.can_refine else None,
        "masks": records,
        "timing_s": {"load": round(t1 - t0, 3), "encode": round(t2 - t1, 3), "decode": round(t3 - t2, 3)},
    }
    (out / "masks.json").write_text(json.dumps(meta, indent=1))
    print(
        f"{len(records)} masks → {out}/ (best predicted IoU {max(float(r['predicted_iou']) for r in records):.3f}); "
        f"model load {t1 - t0:.2f}s, encoder {t2 - t1:.2f}s, decoder{' + graph cut' if predictor.can_refine else ''} "
        f"{t3 - t2:.3f}s; overlay: {out / 'overlay.png'}"
    )
    return 0


def check_prompts(points: list[list[float]], boxes: list[list[float]], width: int, height: int) -> None:
    """Raise `PromptError` naming the option for a prompt the predictor would refuse (NaN, label other than
    0/1, X1 < X0, outside the image), so that it fails before the model is loaded and the image encoded."""
    from segany.predictor import COORD_TOLERANCE_PX as tol
    from segany.predictor import PromptError

    def text(vals: list[float]) -> str:
        return ",".join(f"{v:g}" for v in vals)

    def inside(x: float, y: float) -> bool:
        return -tol <= x <= width + tol and -tol <= y <= height + tol

    where = f"outside the {width}×{height} image (x from 0 to {width}, y from 0 to {height})"
    for p in points:
        if not all(math.isfinite(v) for v in p):
            raise PromptError(f"--point {text(p)}: every number must be finite")
        if len(p) == 3 and p[2] not in (0, 1):
            raise PromptError(f"--point {text(p)}: LABEL must be 1 (foreground) or 0 (background)")
        if not inside(p[0], p[1]):
            raise PromptError(f"--point {text(p)} is {where}")
    for b in boxes:
        if not all(math.isfinite(v) for v in b):
            raise PromptError(f"--box {text(b)}: every number must be finite")
        if b[2] < b[0] or b[3] < b[1]:
            raise PromptError(f"--box {text(b)}: needs X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0")
        if not (inside(b[0], b[1]) and inside(b[2], b[3])):
            raise PromptError(f"--box {text(b)} is {where}")


def _draw_prompts(canvas: Any, points: list[list[float]], boxes: list[list[float]]) -> None:
    import cv2

    for p in points:
        fg = len(p) < 3 or int(p[2]) == 1
        cv2.drawMarker(
            canvas, (int(p[0]), int(p[1])), (0, 255, 0) if fg else (255, 0, 0), cv2.MARKER_STAR, 14, 2
        )
    for b in boxes:
        cv2.rectangle(canvas, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 255, 0), 2)
