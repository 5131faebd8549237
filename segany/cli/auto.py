"""``segany auto``: automatic mask generation over many images, resumable, locally or on a Ray cluster.

Writes one SA-1B JSON per image (plus an overlay PNG with ``--overlay``), ``failures.jsonl``, ``job.json`` and
``summary.json`` into ``--out``. Kill it at any time and run the same command again: it finishes the job with
exactly the files an uninterrupted run would have written. See ``segany.batch`` for naming and guarantees.

Several machines: run ``ray start --head --port 6379 --include-dashboard=false`` on one, ``ray start --address
HEAD_IP:6379`` on the others (same Python environment with segany, same checkpoint path), then this command on
the head with ``--engine ray --address HEAD_IP:6379``. Only this process reads the inputs and writes ``--out``.

Exit status: 0 all inputs done; 1 some inputs failed (listed in failures.jsonl); 2 usage error or the job could
not run (locked/foreign output directory, model load failure, no Ray workers left); 3 an input is neither done
nor recorded as failed (should never happen).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

from segany.cli.errors import is_expected
from segany.cli.model_args import add_model_args

# (flag, generator parameter, type, help) for every official SamAutomaticMaskGenerator option exposed here.
_GENERATOR_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--points-per-side", "points_per_side", int, "grid points per image side (32)"),
    ("--points-per-batch", "points_per_batch", int, "points decoded at once; lower it to save memory (64)"),
    (
        "--pred-iou-thresh",
        "pred_iou_thresh",
        float,
        "keep masks with predicted IoU above this (default: the model's own, else 0.88)",
    ),
    (
        "--stability-score-thresh",
        "stability_score_thresh",
        float,
        "keep masks this stable (default: the model's own, else 0.95)",
    ),
    ("--stability-score-offset", "stability_score_offset", float, "logit offset for stability (1.0)"),
    ("--box-nms-thresh", "box_nms_thresh", float, "box IoU for NMS within a crop (0.7)"),
    ("--crop-n-layers", "crop_n_layers", int, "layers of zoomed crops (0)"),
    ("--crop-nms-thresh", "crop_nms_thresh", float, "box IoU for NMS across crops (0.7)"),
    ("--crop-overlap-ratio", "crop_overlap_ratio", float, "crop overlap, fraction of crop size (512/1500)"),
    (
        "--crop-n-points-downscale-factor",
        "crop_n_points_downscale_factor",
        int,
        "grid shrink per crop layer (1)",
    ),
    ("--min-mask-region-area", "min_mask_region_area", int, "remove holes/islands below this area in px (0)"),
    (
        "--max-mask-area-fraction",
        "max_mask_area_fraction",
        float,
        "drop masks covering this much of the image",
    ),
)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "auto",
        help="segment everything in many images (resumable; local or Ray)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="a directory of images (recursive), a .txt/.lst list of paths, or one image")
    p.add_argument("--out", required=True, help="output directory (created; reuse it to resume)")
    p.add_argument(
        "--preset", default=None, help="named generator settings, e.g. 'sa1b' (the paper's App. B)"
    )
    p.add_argument("--overlay", action="store_true", help="also write a coloured-mask PNG per image")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: HEAD_IP:6379, or 'auto' for the one `ray start` runs here (default: a private local one)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="Ray workers (default: cluster CPUs / per worker)"
    )
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per worker (1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="Ray GPUs per worker (0: run on CPU)")
    add_model_args(p)  # --model, --checkpoint (must exist at that path on every Ray worker), --device (local)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per worker; CPU results depend on it, so a job keeps the value it started with "
        "(default: local all cores, Ray --cpus-per-worker)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("generator options (override the preset and the defaults)")
    for flag, dest, typ, text in _GENERATOR_FLAGS:
        g.add_argument(flag, dest=dest, type=typ, default=None, help=text)
    g.add_argument(
        "--fast",
        action="store_const",
        const=True,
        default=None,
        help="screen stability at low resolution first (faster; may lose a few borderline masks)",
    )
    g.add_argument(
        "--hq-token-only",
        action="store_const",
        const=True,
        default=None,
        help="HQ-SAM models (hq_vit_*): the HQ token's mask alone (default, as the official: SAM's best mask plus "
        "the HQ token's)",
    )
    g.add_argument(
        "--use-m2m",
        action="store_const",
        const=True,
        default=None,
        help="SAM 2 models: decode every mask again with its own low-res logits as the mask prompt (official "
        "SAM 2 generator option, off by default)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from segany import batch
    from segany.cli.extras import require

    require("auto", "auto")
    if args.engine == "ray":
        require("auto --engine ray", "ray")

    from segany.cli.errors import CommandError

    # family options: refused here by the model's name, before any worker loads it
    if args.hq_token_only and not args.model.startswith("hq_"):
        raise CommandError(
            f"--hq-token-only needs an HQ-SAM model (--model hq_vit_*), not --model {args.model}"
        )
    if args.use_m2m and not args.model.startswith("sam2"):
        raise CommandError(
            f"--use-m2m is a SAM 2 option (--model sam2*_hiera_*), not for --model {args.model}"
        )
    dests = [dest for _f, dest, _t, _h in _GENERATOR_FLAGS] + ["fast", "hq_token_only", "use_m2m"]
    overrides = {dest: getattr(args, dest) for dest in dests if getattr(args, dest) is not None}
    try:
        generator_kwargs = batch.resolve_generator_kwargs(args.preset, overrides)
        if args.engine == "ray":
            from segany.batch_ray import RayEngine

            device = "cuda" if args.gpus_per_worker > 0 else "cpu"
            model = batch.ModelSpec(args.model, args.checkpoint, device, args.threads)
            engine: batch.Engine = RayEngine(
                model,
                generator_kwargs,
                address=args.address,
                workers=args.workers,
                cpus_per_worker=args.cpus_per_worker,
                gpus_per_worker=args.gpus_per_worker,
            )
        else:
            device = args.device
            model = batch.ModelSpec(args.model, args.checkpoint, device, args.threads)
            engine = batch.LocalEngine(model, generator_kwargs)
        options = batch.BatchOptions(Path(args.input), Path(args.out), model, generator_kwargs, args.overlay)

        def bar(total: int, initial: int) -> Any:
            return tqdm(
                total=total,
                initial=initial,
                unit="img",
                desc="auto",
                disable=args.no_progress,
                dynamic_ncols=True,
            )

        summary = batch.run_job(options, engine, progress=bar)
    except batch.BatchError as exc:
        print(f"segany auto: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the job could not run: exit 2, never 1 ("some inputs failed")
        if is_expected(exc):
            raise  # a bad checkpoint or model name: `segany.cli.main` reports it as one line (--debug: all)
        traceback.print_exc()
        print(f"segany auto: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(
        f"inputs {summary.inputs} = done {summary.done} + failed {summary.failed}"
        f"{f' + MISSING {len(summary.missing)}' if summary.missing else ''}"
        f" (processed now {summary.processed_this_run}, already done {summary.skipped_done}) -> {summary.out_dir}",
        file=sys.stderr,
    )
    if summary.no_masks:
        n = len(summary.no_masks)
        print(
            f"segany auto: warning: {n} image{'s' if n > 1 else ''} yielded no mask:",
            file=sys.stderr,
        )
        for key, why in list(summary.no_masks.items())[:10]:
            print(f"  {key}: {why}", file=sys.stderr)
    if summary.failed:
        print(f"failures: {Path(args.out) / batch.FAILURES_NAME}", file=sys.stderr)
    if summary.missing:
        print(f"reconciliation gap, not done and not recorded: {summary.missing[:10]}", file=sys.stderr)
    return summary.exit_code
