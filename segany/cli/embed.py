"""`segany embed`: encode images once and cache their embeddings (safetensors) for later prompting."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from segany.cli.errors import CommandError
from segany.cli.model_args import add_model_args, model_from_args


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "embed",
        help="encode images and cache their embeddings",
        description="Run the image encoder once per image and save <stem>.embedding.safetensors into --out; "
        "`segany segment --embedding FILE` and the Python API (ImageEmbedding.load) reuse them.",
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder for the embedding files")
    p.add_argument("--batch-size", type=int, default=1, help="images per encoder call")
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from segany.images import load_image
    from segany.predictor import SamPredictor

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder")
    paths = [Path(p) for p in args.images]
    # Every image is decoded once before anything is encoded or written: a missing, unreadable or truncated one
    # fails the command at once and leaves --out as it was (decoding is cheap next to the encoder).
    for path in tqdm(paths, desc="check", unit="img", disable=len(paths) < 10):
        load_image(path)
    predictor = SamPredictor(model_from_args(args))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for start in tqdm(range(0, len(paths), args.batch_size), desc="embed", unit="batch"):
        chunk = paths[start : start + args.batch_size]
        embs = predictor.embed_images([load_image(p) for p in chunk], batch_size=args.batch_size)
        for path, emb in zip(chunk, embs, strict=True):
            emb.save(out / f"{path.stem}.embedding.safetensors")
    dt = time.perf_counter() - t0
    print(f"{len(paths)} embeddings → {out}/ ({dt / max(len(paths), 1):.2f} s per image)")
    return 0
