"""``segany train CONFIG.yaml``: train or fine-tune SAM (or MAE-pretrain its encoder) from a config file.

Examples::

  segany train configs/tiny_smoke.yaml --out runs/smoke
  segany train configs/finetune_vit_b.yaml --init vit_b:sam_vit_b_01ec64.pth --device cuda --out runs/ft
  segany train configs/default_model.yaml --device cuda --time-budget-min 8 --out runs/default
  segany train runs/default/config.json --out runs/default --resume      # after a kill
  segany train configs/default_model.yaml --pack pack512.npz            # pre-resized data for another machine
  segany train configs/default_model.yaml --data pack512.npz --device cuda --time-budget-min 8
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="train / fine-tune SAM, or MAE-pretrain its encoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="training config (.yaml, or a run's config.json)")
    p.add_argument(
        "--init",
        help="initial weights: vit_b:PATH / vit_l:PATH / vit_h:PATH (official), mae:PATH, "
        "or a segany .safetensors",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--out", default="runs/train", help="output folder (checkpoints, logs, model.safetensors)")
    p.add_argument("--max-steps", type=int, help="number of steps (overrides the config's steps)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors if it exists")
    p.add_argument("--time-budget-min", type=float, help="stop cleanly and save before this many minutes")
    p.add_argument("--data-root", help="folder the config's data sources are relative to")
    p.add_argument(
        "--data",
        action="append",
        metavar="PATH",
        help="replace the config's data sources: a dataset folder or a .npz pack (repeatable)",
    )
    p.add_argument(
        "--mae",
        action="store_true",
        help="MAE-pretrain the encoder instead (writes "
        "OUT/mae_encoder.safetensors; then train with --init mae:PATH)",
    )
    p.add_argument(
        "--pack",
        metavar="PATH",
        help="only pack the config's data sources, pre-resized, into PATH "
        "(.npz), for a data source {kind: pack, root: PATH}",
    )
    p.add_argument(
        "--export-fp16", action="store_true", help="write model.safetensors in float16 (half size)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace
    from pathlib import Path

    from segany.cli.extras import require

    require("train", "train")
    from segany.train.config import TrainConfig, load_config

    path = Path(args.config)
    if not path.is_file():
        raise SystemExit(f"config not found: {path}")
    cfg = TrainConfig.from_json(path.read_text()) if path.suffix == ".json" else load_config(path)
    if args.init:
        cfg = replace(cfg, init=args.init)
    if args.data:
        from segany.train.data import SourceConfig, sources_from_pack

        if len(args.data) == 1 and args.data[0].endswith(".npz") and not args.pack:
            # a pack of the config's own folders: keep their weights
            sources = sources_from_pack(args.data[0], cfg.data.sources)
        else:
            sources = [
                SourceConfig(root=str(Path(d).resolve()), kind="pack" if d.endswith(".npz") else "auto")
                for d in args.data
            ]
        cfg = replace(cfg, data=replace(cfg.data, sources=sources))
    data_root = args.data_root or cfg.data.root

    if args.pack:
        from segany.train.cache import pack_sources
        from segany.train.data import open_sources

        readers = open_sources(cfg.data.sources, data_root)
        counts = pack_sources(
            [(src.root, reader) for src, reader in zip(cfg.data.sources, readers, strict=True)],
            args.pack,
            cfg.model.image_size,
            cfg.data.max_mask_fraction,
            cfg.data.min_mask_pixels,
            validation_fraction=cfg.data.validation_fraction,
        )
        print(json.dumps({"pack": args.pack, **counts, "bytes": Path(args.pack).stat().st_size}))
        return 0
    if args.mae:
        from segany.train.mae import pretrain_mae

        out, losses = pretrain_mae(
            cfg,
            args.out,
            args.device,
            args.max_steps,
            args.time_budget_min,
            data_root,
            progress=not args.no_progress,
        )
        print(
            json.dumps(
                {
                    "mae_encoder": str(out),
                    "steps": len(losses),
                    "loss_first": losses[0] if losses else None,
                    "loss_last": losses[-1] if losses else None,
                }
            )
        )
        return 0

    from segany.train.trainer import train

    res = train(
        cfg,
        args.out,
        device=args.device,
        resume=args.resume,
        max_steps=args.max_steps,
        time_budget_min=args.time_budget_min,
        data_root=data_root,
        progress=not args.no_progress,
        export_fp16=args.export_fp16,
    )
    print(
        json.dumps(
            {
                "out": str(res.out_dir),
                "step": res.step,
                "stopped_early": res.stopped_early,
                "model": str(Path(res.out_dir) / "model.safetensors"),
                "loss_first": res.losses[0] if res.losses else None,
                "loss_last": res.losses[-1] if res.losses else None,
            }
        )
    )
    return 0
