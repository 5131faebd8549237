"""The model options every command shares (`--model`, `--checkpoint`, `--device`)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="model kind: default (segany's shipped model); with --checkpoint (official weights): vit_b, vit_l, "
        "vit_h (SAM), vit_t (MobileSAM), hq_vit_b, hq_vit_l, hq_vit_h, hq_vit_tiny (HQ-SAM), sam2.1_hiera_* "
        "(SAM 2); tiny (test size)",
    )
    p.add_argument(
        "--checkpoint", default=None, help="weights file: .safetensors (preferred) or official .pth"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def model_from_args(args: argparse.Namespace) -> Any:
    """The model of ``--model``/``--checkpoint`` on ``--device``; a wrong choice of either raises an expected
    error (`CheckpointError`, FileNotFoundError, or `CommandError` for the other ValueErrors of model building:
    unknown kind, no checkpoint for vit_*, a checkpoint without a segany config)."""
    from segany.build import load_model

    with model_errors():
        return load_model(args.model, args.checkpoint, args.device)


@contextlib.contextmanager
def model_errors() -> Iterator[None]:
    """Around model building: ValueErrors other than `CheckpointError` become `CommandError` (expected)."""
    from segany.checkpoint import CheckpointError
    from segany.cli.errors import CommandError

    try:
        yield
    except CheckpointError:
        raise
    except ValueError as e:
        raise CommandError(str(e)) from e


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
