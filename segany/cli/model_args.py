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
