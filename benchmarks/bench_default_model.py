"""Encoder time per image, and time per click of segany's shipped default model with and without its graph-cut
refinement (3 masks per call, as on a first click; 1 mask, as on a corrective click).

python benchmarks/bench_default_model.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from segany import SamPredictor, sam_model_registry
from segany.images import load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "examples" / "dog_cat.jpg"))
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    predictor = SamPredictor(sam_model_registry["default"]())
    image = load_image(args.image)
    enc = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        predictor.set_image(image)
        enc.append(time.perf_counter() - t)
    h, w = image.shape[:2]
    print(
        f"threads {args.threads}, {w}x{h} image: encoder median {statistics.median(enc[1:]):.3f} s per image "
        f"(first call {enc[0]:.3f} s)"
    )
    refiner = predictor.refiner
    point = dict(point_coords=np.array([[w / 3, h / 2]]), point_labels=np.array([1]))
    for multimask in (True, False):
        row = []
        for name, ref in (("network only", None), ("with graph cut", refiner)):
            predictor.refiner = ref
            dec = []
            for _ in range(10):
                t = time.perf_counter()
                predictor.predict(**point, multimask_output=multimask)
                dec.append(time.perf_counter() - t)
            row.append(f"{name} {statistics.median(dec) * 1000:.1f} ms")
        print(f"predict, {3 if multimask else 1} mask(s), median per call: " + ", ".join(row))
    predictor.refiner = refiner


if __name__ == "__main__":
    main()
