"""`segany engine retrain`: close the data-engine loop (fine-tune on accepted masks, report the click change)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = """The data-engine cycle: annotate (`segany annotate`), then `segany engine retrain IMAGE_DIR --out DIR`
fine-tunes the model that served the annotation on the accepted masks (a share of the annotated images is held
out), runs the click benchmark before and after (1-click mIoU, NoC@85/90; on the held-out images and, with
--benchmark, on an evaluation folder such as shared/data/grabcut) and writes DIR/report.json and
DIR/run/model.safetensors. Serve the new model with `segany annotate IMAGE_DIR --checkpoint DIR/run/model.safetensors`."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("engine", help="data-engine maintenance (retrain on accepted masks)")
    sub = p.add_subparsers(dest="engine_command", required=True, metavar="ACTION")
    r = sub.add_parser("retrain", help="fine-tune on the accepted masks and report the click-benchmark change",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    r.add_argument("image_dir", type=Path, metavar="IMAGE_DIR", help="the folder given to `segany annotate`")
    r.add_argument("--data-dir", type=Path, default=None, help="as for annotate (default: IMAGE_DIR/.segany)")
    r.add_argument(
        "--db", default=None, metavar="URL", help="as for annotate (default: DATA_DIR/annotations.db)"
    )
    r.add_argument("--model", default="default", help="the model kind that served the annotation")
    r.add_argument("--checkpoint", default=None, help="its weights (.safetensors)")
    r.add_argument(
        "--out", type=Path, required=True, help="output folder (report.json, run/model.safetensors)"
    )
    r.add_argument("--steps", type=int, default=200, help="fine-tuning steps (default 200)")
    r.add_argument("--points", type=int, default=8, help="corrective clicks simulated per mask in training")
    r.add_argument("--eval-fraction", type=float, default=0.25, help="share of annotated images held out")
    r.add_argument("--max-clicks", type=int, default=5, help="clicks per object in the benchmark")
    r.add_argument("--benchmark", type=Path, default=None, help="also evaluate on this dataset folder")
    r.add_argument("--benchmark-limit", type=int, default=20, help="images used from --benchmark")
    r.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from segany.cli.extras import require

    require("engine retrain", "engine", "train")
    from segany.engine.db import make_engine
    from segany.engine.model import ModelSpec
    from segany.engine.retrain import retrain

    data_dir = args.data_dir or args.image_dir / ".segany"
    db_url = args.db or f"sqlite:///{(data_dir / 'annotations.db').resolve()}"
    engine = make_engine(db_url)
    try:
        report = retrain(
            engine,
            args.image_dir,
            data_dir,
            ModelSpec(kind=args.model, checkpoint=args.checkpoint),
            args.out,
            steps=args.steps,
            n_points=args.points,
            eval_fraction=args.eval_fraction,
            max_clicks=args.max_clicks,
            benchmark=args.benchmark,
            benchmark_limit=args.benchmark_limit,
            seed=args.seed,
        )
    except ValueError as err:
        print(f"error: {err}")
        return 2
    finally:
        engine.dispose()
    print(json.dumps({"checkpoint": report.checkpoint, "train_images": report.n_train_images,
                      "train_masks": report.n_train_masks, "heldout_images": report.n_eval_images,
                      "change": report.change(), "seconds": round(report.seconds, 1)}, indent=2))  # fmt: skip
    return 0
