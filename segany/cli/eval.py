"""``segany eval``: the paper's zero-shot experiments on any model, with baselines, tables and plots.

    segany eval points    --data DIR [DIR ...]  clicks on folder benchmarks (images/ + masks/), COCO or ADE20K
    segany eval edges     --data BSDS500_DIR    BSDS500 boundary benchmark (test split), with Canny
    segany eval proposals --data COCO_DIR       mask AR@10/100/1000 of automatic proposals
    segany eval instances --data COCO_DIR       mask AP of box-prompted masks (--detections or GT boxes)
    segany eval validation --data DATA_ROOT    the held-out split of the training folders: clicks, IoU-head
                                               calibration, whole/part, background click, generator filters

Every command writes ``<command>.md`` (table), ``<command>.json`` (all numbers, model, data, settings, segany
version) and PNG plots into ``--out``. ``--limit N`` evaluates only N images of each dataset: for points, N
images evenly spaced over the sorted set (its first N are often one kind of object); for the others, the first N.
Several points datasets are named by their folder, with parent folders where names would clash (a/val, b/val).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segany.cli.model_args import add_model_args, add_refine_arg

KINDS = ("points", "edges", "proposals", "instances", "validation")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="zero-shot evaluation: points, edges, proposals, instances",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=KINDS, help="which experiment")
    p.add_argument("--data", required=True, nargs="+", help="dataset folder(s); several only for points")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate only N images per dataset: points, evenly spaced over the sorted set; others, the first N",
    )
    add_model_args(p)
    add_refine_arg(p)
    p.add_argument(
        "--max-clicks", type=int, default=None, help="points: clicks per object (20); validation: (5)"
    )
    p.add_argument("--no-grabcut", action="store_true", help="points: skip the GrabCut baseline")
    p.add_argument(
        "--mask-kind",
        choices=("binary", "labels"),
        default="binary",
        help="points, images/ + masks/ folders: one object per mask file (binary; 128 = ignore) or one "
        "instance-id map per image (labels: VOC/SBD/DAVIS-style)",
    )
    p.add_argument(
        "--ignore-label",
        type=int,
        default=None,
        help="points, --mask-kind labels: id ignored for every object (e.g. 255)",
    )
    p.add_argument("--split", default="test", help="edges: BSDS500 split (test)")
    p.add_argument("--workers", type=int, default=1, help="edges: processes for benchmark scoring (1)")
    p.add_argument("--annotations", default=None, help="proposals/instances: COCO file (DATA/instances.json)")
    p.add_argument(
        "--detections", default=None, help="instances: COCO results file of boxes (default: GT boxes)"
    )
    p.add_argument(
        "--points-per-side",
        type=int,
        default=None,
        help="edges/proposals: grid side (default: the paper's, 16 for edges, 64 for proposals)",
    )
    p.add_argument("--points-per-batch", type=int, default=64, help="proposals: generator batch size (64)")
    p.add_argument(
        "--folders",
        nargs="+",
        default=None,
        help="validation: training folders under DATA_ROOT (default: every training folder present)",
    )
    p.add_argument(
        "--fraction", type=float, default=None, help="validation: held-out share of each folder (0.08)"
    )
    p.add_argument("--auto-images", type=int, default=30, help="validation: images for the generator (30)")
    p.add_argument(
        "--write-generator-defaults",
        action="store_true",
        help="validation: store the chosen generator filters in --checkpoint (a segany .safetensors)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import sys

    from segany.cli.extras import require

    require("eval", "eval")
    from segany.cli.model_args import model_from_args, predictor_from_args
    from segany.evaluate import edges as edge_bench
    from segany.evaluate import report, runs

    if args.limit is not None and args.limit < 1:
        print("segany eval: --limit must be >= 1", file=sys.stderr)
        return 2
    if args.kind != "points" and len(args.data) != 1:
        print(f"segany eval {args.kind}: give exactly one --data folder", file=sys.stderr)
        return 2
    for d in args.data:
        if not Path(d).is_dir():
            print(f"segany eval: data folder not found: {d}", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        model = model_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"segany eval: cannot load the model: {e}", file=sys.stderr)
        return 2
    if args.max_clicks is None:  # the protocol's 20 clicks; the validation split's report stops at 5
        args.max_clicks = 5 if args.kind == "validation" else 20
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    meta = report.run_metadata(args.model, args.checkpoint, args.data, settings)
    predictor = predictor_from_args(model, args)
    # What `--refine auto` resolved to, so that a report says whether its masks are the network's alone.
    meta["mask_refiner"] = None if predictor.refiner is None else repr(predictor.refiner)
    progress = not args.no_progress
    if args.kind == "points":
        payload = runs.run_points(
            predictor,
            args.data,
            out,
            meta,
            args.limit,
            args.max_clicks,
            not args.no_grabcut,
            progress,
            args.mask_kind,
            args.ignore_label,
        )
    elif args.kind == "edges":
        payload = runs.run_edges(
            predictor,
            args.data[0],
            out,
            meta,
            args.split,
            args.limit,
            args.workers,
            progress,
            args.points_per_side or edge_bench.EDGE_POINTS_PER_SIDE,
        )
    elif args.kind == "validation":
        from segany.data.split import VALIDATION_FRACTION
        from segany.evaluate import validation

        if args.write_generator_defaults and not (
            args.checkpoint and args.checkpoint.endswith(".safetensors")
        ):
            print(
                "segany eval validation: --write-generator-defaults needs --checkpoint FILE.safetensors",
                file=sys.stderr,
            )
            return 2
        folders = args.folders or [
            f for f in validation.TRAINING_FOLDERS if (Path(args.data[0]) / f).is_dir()
        ]
        rep = validation.run_validation(
            model,
            args.data[0],
            folders,
            args.fraction if args.fraction is not None else VALIDATION_FRACTION,
            max_clicks=args.max_clicks,
            limit=args.limit,
            auto_images=args.auto_images,
            points_per_side=args.points_per_side or 32,
            progress=(lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else None,
        )
        payload = validation.write_report(rep, out, meta)
        if args.write_generator_defaults:
            from segany.checkpoint import write_generator_defaults

            chosen = payload["summary"]["automatic"]["chosen"]
            write_generator_defaults(
                args.checkpoint,
                {k: chosen[k] for k in ("pred_iou_thresh", "stability_score_thresh")},
            )
    elif args.kind == "proposals":
        payload = runs.run_proposals(
            model,
            args.data[0],
            out,
            meta,
            args.annotations,
            args.limit,
            args.points_per_batch,
            progress,
            args.points_per_side,
        )
    else:
        payload = runs.run_instances(
            predictor,
            args.data[0],
            out,
            meta,
            args.annotations,
            args.detections,
            args.limit,
            progress,
        )
    del payload
    print((out / f"{args.kind}.md").read_text())
    return 0
