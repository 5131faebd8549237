"""The data-engine loop: fine-tune the serving model on the engine's accepted masks, and measure the change.

One cycle, as in the paper's stages 1-2 (the model was retrained 6 + 5 times on the new masks):

1. annotate with ``segany annotate`` (people click, stage 2 pre-fills confident masks);
2. ``segany engine retrain``: the accepted masks are exported as a COCO folder, a share of the annotated images
   is held out, the current model is fine-tuned on the rest with the training recipe (``segany.train``), and
   the click benchmark (``segany.evaluate.clicks``: 1-click mIoU, NoC@85/90) is run before and after, on the
   held-out engine images and optionally on a benchmark folder;
3. serve the new ``model.safetensors`` with ``segany annotate --model default --checkpoint ...`` (its embeddings
   are cached under a new model key, so old embeddings are never mixed with new weights).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from sqlalchemy import select
from sqlalchemy.engine import Engine

from segany.engine import exports, media, store
from segany.engine.db import Image, Project, read_session
from segany.engine.model import ModelSpec
from segany.images import load_image

SUFFIX = {"image/jpeg": ".jpg", "image/png": ".png", "image/bmp": ".bmp", "image/tiff": ".tif",
          "image/webp": ".webp", "image/gif": ".gif"}  # fmt: skip


@dataclass
class RetrainReport:
    n_train_images: int
    n_train_masks: int
    n_eval_images: int
    checkpoint: str
    steps: int
    seconds: float
    before: dict[str, dict[str, Any]] = field(default_factory=dict)  # benchmark name -> click summary
    after: dict[str, dict[str, Any]] = field(default_factory=dict)

    def change(self) -> dict[str, dict[str, float]]:
        keys = ("miou_1_auto", "miou_1_oracle", "noc_85", "noc_90")
        return {
            name: {k: self.after[name][k] - self.before[name][k] for k in keys if k in self.before[name]}
            for name in self.before
        }


def _annotated(engine: Engine) -> tuple[list[Image], dict[int, list[Any]]]:
    with read_session(engine) as s:
        project_ids = list(s.scalars(select(Project.id).order_by(Project.id)))
    images: list[Image] = []
    by_image: dict[int, list[Any]] = {}
    for pid in project_ids:
        imgs, anns = store.project_dump(engine, pid)
        for a, creator in anns:
            by_image.setdefault(a.image_id, []).append((a, creator))
        images += [im for im in imgs if im.id in by_image]
    return images, by_image


def _path(im: Image, image_dir: Path, media_dir: Path) -> Path:
    p = media.resolve(image_dir if im.storage == "dir" else media_dir, im.rel_path)
    if p is None:
        raise FileNotFoundError(f"image {im.id} ({im.file_name}) is missing from disk")
    return p


def write_coco_folder(out: Path, images: list[Image], by_image: dict[int, list[Any]], image_dir: Path,
                      media_dir: Path) -> int:  # fmt: skip
    """``out/instances.json`` + ``out/images/<id>.<ext>``: the layout ``segany.data`` reads as COCO."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    anns = [pair for im in images for pair in by_image[im.id]]
    coco = exports.to_coco(images, anns)
    for entry, im in zip(coco["images"], images, strict=True):
        entry["file_name"] = f"{im.id}{SUFFIX[im.mime]}"
        shutil.copyfile(_path(im, image_dir, media_dir), out / "images" / entry["file_name"])
    (out / "instances.json").write_text(json.dumps(coco))
    return len(anns)


def _samples(images: list[Image], by_image: dict[int, list[Any]], image_dir: Path,
             media_dir: Path) -> list[tuple[np.ndarray, list[np.ndarray]]]:  # fmt: skip
    out = []
    for im in images:
        rgb = load_image(_path(im, image_dir, media_dir))
        masks = [
            mask_utils.decode({"size": [im.height, im.width], "counts": a.rle_counts}).astype(bool)
            for a, _ in by_image[im.id]
        ]
        out.append((rgb, masks))
    return out


def benchmark_samples(path: Path, limit: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Up to ``limit`` images of an evaluation dataset folder (any layout ``segany.data`` reads)."""
    from segany.data.mixed import open_source

    source = open_source(path, for_training=False)
    out = []
    for i in range(min(limit, len(source))):
        sample = source[i]
        out.append((sample.image, [m for m in sample.masks if m.any()]))
    return out


def click_benchmark(
    sam: Any, samples: list[tuple[np.ndarray, list[np.ndarray]]], max_clicks: int
) -> dict[str, Any]:
    import torch

    from segany.evaluate.clicks import run_clicks, summarize
    from segany.predictor import SamPredictor

    predictor = SamPredictor(sam.eval())
    results = []
    with torch.inference_mode():
        for rgb, masks in samples:
            predictor.set_image(rgb)
            results += [run_clicks(predictor, m, max_clicks=max_clicks) for m in masks]
    return summarize(results, max_clicks=max_clicks)


def retrain(
    engine: Engine,
    image_dir: Path,
    data_dir: Path,
    spec: ModelSpec,
    out_dir: Path,
    *,
    steps: int = 200,
    n_points: int = 8,
    eval_fraction: float = 0.25,
    max_clicks: int = 5,
    benchmark: Path | None = None,
    benchmark_limit: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> RetrainReport:
    """Run one data-engine cycle (see the module docstring) and write ``out_dir/report.json``."""
    import torch

    from segany.build import CONFIGS, build_sam
    from segany.checkpoint import read_config, save_safetensors
    from segany.engine.model import ModelService
    from segany.train.config import DataConfig, OptimConfig, TrainConfig
    from segany.train.data import SourceConfig
    from segany.train.trainer import train

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    media_dir = data_dir / "media"
    images, by_image = _annotated(engine)
    if len(images) < 2:
        raise ValueError(
            f"need at least 2 annotated images (one to train on, one held out), found {len(images)}"
        )
    order = list(images)
    random.Random(seed).shuffle(order)
    n_eval = min(len(order) - 1, max(1, round(eval_fraction * len(order))))
    eval_images, train_images = order[:n_eval], order[n_eval:]
    n_masks = write_coco_folder(out_dir / "train", train_images, by_image, image_dir, media_dir)

    benches = {"engine_heldout": _samples(eval_images, by_image, image_dir, media_dir)}
    if benchmark is not None:
        benches[benchmark.name] = benchmark_samples(benchmark, benchmark_limit)

    before_model = ModelService(spec, data_dir / "cache").sam()
    config = read_config(spec.checkpoint) if spec.checkpoint else None
    if config is None:
        if spec.kind not in CONFIGS:
            raise ValueError(
                f"cannot tell the architecture of {spec.kind!r}; pass a segany .safetensors checkpoint"
            )
        config = CONFIGS[spec.kind]
    init = out_dir / "before.safetensors"
    save_safetensors(init, before_model.state_dict(), config)
    report = RetrainReport(len(train_images), n_masks, len(eval_images), "", steps, 0.0)
    report.before = {name: click_benchmark(before_model, s, max_clicks) for name, s in benches.items()}

    cfg = TrainConfig(
        model=config,
        data=DataConfig(root=str(out_dir), sources=[SourceConfig(root="train")]),
        optim=OptimConfig(
            lr=1e-5, warmup_steps=min(20, steps // 4), layer_decay=1.0
        ),  # fine-tune: small steps
        steps=steps,
        batch_size=1,
        n_points=n_points,
        seed=seed,
        init=str(init),
    )
    train(cfg, out_dir / "run", progress=progress, fit_to_budget=False)
    checkpoint = out_dir / "run" / "model.safetensors"
    after_model = build_sam(config, checkpoint)
    torch.manual_seed(seed)
    report.after = {name: click_benchmark(after_model, s, max_clicks) for name, s in benches.items()}
    report.checkpoint = str(checkpoint)
    report.seconds = time.perf_counter() - t0
    (out_dir / "report.json").write_text(json.dumps({**asdict(report), "change": report.change()}, indent=2))
    return report
