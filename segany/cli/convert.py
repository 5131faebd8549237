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
        "--model",
        default=None,
        help="vit_b, vit_l, vit_h, vit_t, hq_vit_b/l/h/tiny, sam2.1_hiera_* or sam2_hiera_* (inferred from the "
        "weights if omitted)",
    )


def run(args: argparse.Namespace) -> int:
    from segany.build import CONFIGS, SamConfig
    from segany.build_sam2 import SAM2_CONFIGS
    from segany.checkpoint import convert
    from segany.cli.errors import CommandError

    if not str(args.dst).endswith(".safetensors"):
        raise CommandError("the output file must end in .safetensors")
    config = convert(args.src, args.dst, args.model)
    if isinstance(config, SamConfig):  # embedded in the file, which alone then says what to build
        kind = args.model or next(k for k, c in CONFIGS.items() if c == config)
        print(f"wrote {args.dst} ({kind}, architecture config embedded)")
    else:  # SAM 2: the official layout, loaded through its registry name
        kind = args.model or next(k for k, c in SAM2_CONFIGS.items() if c == config)
        print(f"wrote {args.dst} ({kind}; load it with --model {kind} --checkpoint {args.dst})")
    return 0
