"""Side by side: the default model's masks with and without its graph-cut refinement, for one click.

python examples/compare_refinement.py examples/dog_cat.jpg 160 185 docs/refinement_example.png
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw

from segany import SamPredictor, sam_model_registry
from segany.images import load_image
from segany.overlay import render_overlay


def main() -> None:
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    path, x, y, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    image = load_image(path)
    predictor = SamPredictor(sam_model_registry["default"]())
    predictor.set_image(image)
    point = dict(point_coords=np.array([[x, y]]), point_labels=np.array([1]))
    panels = []
    for title, refiner in (
        ("with graph-cut refinement (default)", predictor.refiner),
        ("network only", None),
    ):
        predictor.refiner = refiner
        masks, scores, _ = predictor.predict(**point)
        best = int(np.argmax(scores))
        panel = Image.fromarray(render_overlay(image, masks[best : best + 1]))
        draw = ImageDraw.Draw(panel)
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=(0, 255, 0), outline=(0, 0, 0))
        draw.text((8, 8), title, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
        panels.append(panel)
    w, h = panels[0].size
    sheet = Image.new("RGB", (2 * w + 8, h), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (i * (w + 8), 0))
    sheet.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
