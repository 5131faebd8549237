"""`segany calibrate`: fit the IoU head's per-token map on training images and write calibrated weights.

segany calibrate --checkpoint runs/v2/model.safetensors --data ../shared/data --out calibrated.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from segany.cli.model_args import add_model_args

CALIBRATION_METADATA_KEY = "segany_iou_calibration"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="calibrate a model's IoU head on training images (a per-token affine map, folded into its weights)",
        description="Fit iou' = a_k * iou_k + b_k per output token so that the predicted IoU tracks the actual "
        "IoU of first-click masks, on images of the training folders outside the validation split, and write "
        "the weights with the map folded into the IoU head's last layer (every other tensor unchanged). The "
        "generator thresholds a file carries are dropped (they were chosen on the old scale): choose new ones "
        "with `segany eval validation --checkpoint OUT --write-generator-defaults`.",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, help="the folder holding the training folders (../shared/data)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--images", type=int, default=60, help="training images per folder (default 60)")
    p.add_argument("--folders", nargs="+", default=None, help="training folders to use (default: all found)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from segany.build import DEFAULT_WEIGHTS
    from segany.checkpoint import GENERATOR_METADATA_KEY, read_safetensors, save_safetensors
    from segany.cli.errors import CommandError
    from segany.cli.model_args import model_from_args
    from segany.data.mixed import open_source
    from segany.data.split import VALIDATION_FRACTION, is_validation
    from segany.evaluate.validation import TRAINING_FOLDERS
    from segany.predictor import SamPredictor
    from segany.train.calibrate import collect_first_clicks, fit_iou_calibration, fold_iou_calibration

    src = Path(args.checkpoint) if args.checkpoint else DEFAULT_WEIGHTS
    if src.suffix != ".safetensors" or not str(args.out).endswith(".safetensors"):
        raise CommandError("calibrate reads and writes .safetensors files (convert a .pth first)")
    folders = args.folders or [f for f in TRAINING_FOLDERS if (Path(args.data) / f).is_dir()]
    if not folders:
        raise CommandError(
            f"no training folder under {args.data} (expected some of {', '.join(TRAINING_FOLDERS)})"
        )
    model = model_from_args(args).eval()

    def training_samples() -> Any:
        for name in folders:
            reader = open_source(Path(args.data) / name, for_training=True)
            order = np.random.default_rng([args.seed, len(name)]).permutation(len(reader))
            taken = 0
            for i in order:
                if taken >= args.images:
                    break
                sample = reader[int(i)]
                if "#" in sample.source and not sample.source.endswith("#0"):
                    continue  # BSDS500: one annotator per image
                if is_validation(sample.source, VALIDATION_FRACTION) or not len(sample.masks):
                    continue
                taken += 1
                yield sample

    total = args.images * len(folders)
    with tqdm(total=total, unit="img", desc="calibrate", disable=args.no_progress) as bar:
        tokens, predicted, actual = collect_first_clicks(
            SamPredictor(model, refiner=False),
            training_samples(),
            seed=args.seed,
            progress=lambda n: bar.update(n - bar.n),
        )
    cal = fit_iou_calibration(tokens, predicted, actual)
    fold_iou_calibration(model, cal)

    head = "mask_decoder.iou_prediction_head.layers." + str(
        len(model.mask_decoder.iou_prediction_head.layers) - 1
    )
    new = model.state_dict()
    tensors, meta = read_safetensors(src)
    for key in (f"{head}.weight", f"{head}.bias"):
        if key not in tensors:
            raise CommandError(f"{src} has no {key}: not a SAM-layout file")
        tensors[key] = new[key].to(tensors[key].dtype)
    dropped = meta.pop(GENERATOR_METADATA_KEY, None)
    meta[CALIBRATION_METADATA_KEY] = json.dumps(cal.as_dict())
    save_safetensors(args.out, {k: torch.as_tensor(v) for k, v in tensors.items()}, metadata=meta)
    print(
        f"IoU head calibrated on {cal.masks} masks of {len(folders)} training folders: mean abs. error "
        f"{cal.mae_before:.3f} -> {cal.mae_after:.3f}; scale {[round(a, 3) for a in cal.scale]}, "
        f"shift {[round(b, 3) for b in cal.shift]} -> {args.out}",
        file=sys.stderr,
    )
    if dropped:
        print(
            f"dropped the generator thresholds {dropped} (old scale): segany eval validation --checkpoint "
            f"{args.out} --data {args.data} --write-generator-defaults --out DIR",
            file=sys.stderr,
        )
    return 0
