"""`segany convert`: official `.pth` → `.safetensors` (validated, with the config embedded)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official .pth checkpoint to .safetensors",
        description="Read a checkpoint with torch.load and weights_only=True — a pickle that tries to run code is "
        "refused —, check every key and shape against the model size, and write .safetensors with the "
        "architecture config embedded, so later loads never touch pickle.",
    )
    p.add_argument("src", help="input .pth (or .safetensors)")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument(
        "--model", default=None, help="vit_b, vit_l or vit_h (inferred from the weights if omitted)"
    )


def run(args: argparse.Namespace) -> int:
    from segany.checkpoint import convert
    from segany.cli.errors import CommandError

    if not str(args.dst).endswith(".safetensors"):
        raise CommandError("the output file must end in .safetensors")
    config = convert(args.src, args.dst, args.model)
    print(f"wrote {args.dst} (encoder {config.encoder_embed_dim}-d × {config.encoder_depth} blocks)")
    return 0
