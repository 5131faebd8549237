"""Automatic mask generation: official `segment-anything==1.0` vs segany, same weights, same image, one process.

Prints, per generator, the median end-to-end time and its split (encoder / decoder / filtering+NMS / RLE), the
end-to-end ratio, and how the mask sets compare (official vs segany exact; segany exact vs segany --fast).

Configs (random weights; every parameter randomised, hypernetwork outputs scaled so masks pass the filters):
  vit_b   the real ViT-B model (1024 px input): ~13 s encoder + ~0.1-0.3 s per prompt on a 2-core CPU.
  bench   (default) the real SAM mask decoder and prompt encoder (identical in ViT-B/L/H: 256-d, 8 heads,
          64x64 embedding at 1024 px) behind a small 2-block encoder, so the decoder, upsampling, filtering
          and RLE costs are the real ones while the run stays affordable on 2 shared cores.
  tiny    segany's test config (256 px input), seconds.

Official split: encoder = SamPredictor.set_image, decoder = predict_torch (includes its upsampling to full
resolution), RLE = mask_to_rle_pytorch + rle_to_mask/coco encode, filtering+NMS = the rest.
segany split: encoder = set_image, decoder = grid decoder, filtering+NMS = upsampling of survivors, stability,
boxes, NMS, small-region cleanup; RLE = unpacking the final masks + encoding + records.

Example:
  python benchmarks/bench_automatic.py --config bench --points-per-side 16 --size 480x640 --repeat 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the official model is built by the test oracle's builder (one copy of that mapping)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from segany.build import TINY, VIT_B, SamConfig
from segany.modeling import Sam


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


CONFIGS: dict[str, SamConfig] = {
    "vit_b": VIT_B,
    "tiny": TINY,
    "bench": SamConfig(
        encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,)
    ),
}


def build_pair(config: SamConfig, seed: int) -> tuple[torch.nn.Module, Sam]:
    """(official, segany) models with identical randomised weights (the tests' builder)."""
    from oracle import amg_twin_models

    return amg_twin_models(config, seed)


def smooth_image(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.integers(0, 256, (1, 3, 4, 6)).astype(np.float32))
    big = torch.nn.functional.interpolate(small, (h, w), mode="bicubic", align_corners=False)
    return big[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()


class OfficialTimer:
    """Times the official generator's stages (encoder, decoder, RLE) by wrapping the functions it calls."""

    _patched = False
    t: dict[str, float] = {}

    def __init__(self, gen: Any) -> None:
        import segment_anything.automatic_mask_generator as amg_mod

        OfficialTimer.t = {}
        self._wrap(gen.predictor, "set_image", "encoder")
        self._wrap(gen.predictor, "predict_torch", "decoder")
        if not OfficialTimer._patched:  # module functions: wrap once per process
            for name in ("mask_to_rle_pytorch", "rle_to_mask", "coco_encode_rle"):
                self._wrap(amg_mod, name, "rle")
            OfficialTimer._patched = True

    @staticmethod
    def _wrap(obj: Any, name: str, key: str) -> None:
        fn = getattr(obj, name)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                OfficialTimer.t[key] = OfficialTimer.t.get(key, 0.0) + time.perf_counter() - t0

        setattr(obj, name, timed)


def mask_of(seg: Any) -> np.ndarray:
    from segany.masks import decode_rle, rle_to_mask

    if isinstance(seg, np.ndarray):
        return seg
    return rle_to_mask(seg) if isinstance(seg["counts"], list) else decode_rle(seg)


def compare(a: list[dict], b: list[dict]) -> str:
    """Match masks one-to-one (max IoU); report counts, matched >= 0.99, mean matched IoU, mask-set IoU."""
    from scipy.optimize import linear_sum_assignment

    if not a or not b:
        return f"{len(a)} vs {len(b)} masks"
    x = np.stack([mask_of(r["segmentation"]) for r in a]).reshape(len(a), -1).astype(np.float32)
    y = np.stack([mask_of(r["segmentation"]) for r in b]).reshape(len(b), -1).astype(np.float32)
    inter = x @ y.T
    union = x.sum(1)[:, None] + y.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    r, c = linear_sum_assignment(-iou)
    matched = iou[r, c]
    set_iou = matched.sum() / (len(a) + len(b) - len(matched))  # unmatched masks count as IoU 0
    return (
        f"{len(a)} vs {len(b)} masks, {int((matched >= 0.99).sum())} matched at IoU>=0.99, "
        f"mean matched IoU {matched.mean():.4f}, mask-set IoU {set_iou:.4f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="bench")
    ap.add_argument("--size", type=parse_size, default=(480, 640), help="image HxW (synthetic smooth image)")
    ap.add_argument("--image", help="use this image file instead (RGB)")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--min-mask-region-area", type=int, default=0)
    ap.add_argument("--output-mode", default="binary_mask")
    ap.add_argument(
        "--thresholds",
        choices=["low", "default"],
        default="low",
        help="low: settings under which random weights keep masks (as the tests); default: official defaults",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs per generator (interleaved); medians reported"
    )
    ap.add_argument("--pred-iou-thresh", type=float, help="override the threshold set chosen by --thresholds")
    ap.add_argument("--stability-score-thresh", type=float, help="override, as --pred-iou-thresh")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fast", action="store_true", help="skip the fast mode run")
    args = ap.parse_args()

    import segment_anything as sa

    from segany.automatic import SamAutomaticMaskGenerator

    torch.set_num_threads(args.threads)
    off, ours = build_pair(CONFIGS[args.config], args.seed)
    off.to(args.device)
    ours.to(args.device)
    if args.image:
        from PIL import Image

        image = np.array(Image.open(args.image).convert("RGB"))
    else:
        image = smooth_image(args.seed, *args.size)
    kw: dict[str, Any] = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "crop_n_layers": args.crop_n_layers,
        "min_mask_region_area": args.min_mask_region_area,
        "output_mode": args.output_mode,
    }
    if args.thresholds == "low":
        kw.update(
            pred_iou_thresh=0.12,
            stability_score_thresh=0.02,
            stability_score_offset=0.3,
            box_nms_thresh=0.97,
            crop_nms_thresh=0.97,
        )
    if args.pred_iou_thresh is not None:
        kw["pred_iou_thresh"] = args.pred_iou_thresh
    if args.stability_score_thresh is not None:
        kw["stability_score_thresh"] = args.stability_score_thresh
    print(f"config={args.config} image={image.shape[1]}x{image.shape[0]} threads={args.threads} {kw}")

    times: dict[str, list[float]] = {"official": [], "segany": [], "segany-fast": []}
    splits: dict[str, dict[str, float]] = {}
    results: dict[str, list[dict]] = {}
    runs = ["official", "segany"] + ([] if args.no_fast else ["segany-fast"])
    for _ in range(args.repeat):
        for name in runs:
            if name == "official":
                gen: Any = sa.SamAutomaticMaskGenerator(off, **kw)
                OfficialTimer(gen)
            else:
                gen = SamAutomaticMaskGenerator(ours, **kw, fast=(name == "segany-fast"))
            t0 = time.perf_counter()
            out = gen.generate(image)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            total = time.perf_counter() - t0
            times[name].append(total)
            split = dict(OfficialTimer.t) if name == "official" else dict(gen.timings)
            split["filter_nms"] = total - sum(v for k, v in split.items() if k != "filter_nms")
            splits[name] = split
            results[name] = out
            print(f"  {name:12s} {total:8.2f} s  {len(out)} masks", flush=True)

    print("\nmedian end-to-end and split of the last run (seconds):")
    for name in runs:
        s = splits[name]
        parts = " ".join(f"{k}={s.get(k, 0.0):.2f}" for k in ("encoder", "decoder", "filter_nms", "rle"))
        print(f"  {name:12s} {statistics.median(times[name]):8.2f}  {parts}")
    base = statistics.median(times["official"])
    for name in runs[1:]:
        print(f"  ratio official/{name}: {base / statistics.median(times[name]):.2f}x")
    print("\nmask sets:")
    print(f"  official vs segany      : {compare(results['official'], results['segany'])}")
    if "segany-fast" in results:
        print(f"  segany vs segany --fast : {compare(results['segany'], results['segany-fast'])}")


if __name__ == "__main__":
    main()
