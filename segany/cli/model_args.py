"""The model options every command shares (`--model`, `--checkpoint`, `--device`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="model kind: default (segany's shipped model), vit_b, vit_l, vit_h (need --checkpoint), tiny",
    )
    p.add_argument(
        "--checkpoint", default=None, help="weights file: .safetensors (preferred) or official .pth"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def model_from_args(args: argparse.Namespace) -> Any:
    from segany.build import load_model

    return load_model(args.model, args.checkpoint, args.device)


def add_refine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refine",
        choices=("auto", "on", "off"),
        default="auto",
        help="graph-cut refinement of point/box masks with the image's colours (opt-in: 0.05-0.6 s per mask on "
        "a CPU, and the annotation page shows the network's masks): auto = the model's own choice (off for "
        "every built-in model), on, off",
    )


def predictor_from_args(model: Any, args: argparse.Namespace) -> Any:
    """A `SamPredictor` with the refinement `--refine` asks for."""
    from segany.predictor import SamPredictor

    choice = getattr(args, "refine", "auto")
    return SamPredictor(model, refiner={"auto": None, "on": True, "off": False}[choice])
