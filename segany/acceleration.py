"""Opt-in fast paths for the image encoder. The default path is bit-identical to the official code; these
trade exactness for speed, and each has its accuracy measured in `benchmarks/bench_predictor.py`.

* ``"sdpa"``: `scaled_dot_product_attention` with the relative-position term as an attention bias.
* ``"int8"``: dynamic int8 quantisation of the encoder's linear layers (uses AVX-512 VNNI on CPUs that have
  it); weights quantised once, activations per call.
* ``"compile"``: `torch.compile` of the encoder (inductor); the first call compiles (tens of seconds).
* ``"bf16"``: bfloat16 autocast, for GPUs (slower than fp32 on CPUs without bf16 units).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from segany.modeling import Sam
from segany.modeling.image_encoder import Attention

Mode = Literal["exact", "sdpa", "int8", "compile", "bf16"]
MODES: tuple[str, ...] = ("exact", "sdpa", "int8", "compile", "bf16")


def set_fused_attention(model: Sam, fused: bool) -> None:
    for m in model.image_encoder.modules():
        if isinstance(m, Attention):
            m.fused = fused


class _Bf16Encoder(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = encoder.img_size  # type: ignore[has-type]

    def __getattr__(self, name: str) -> torch.Tensor | nn.Module:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["encoder"], name)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.encoder(x).float()

    def forward_with_interm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HQ-SAM's (embedding, early features), both in bf16 autocast like `forward`."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            emb, interm = self.encoder.forward_with_interm(x)  # type: ignore[operator]
        return emb.float(), interm.float()


def accelerate(model: Sam, mode: str) -> Sam:
    """Switch the image encoder of `model` (in place) to a fast path; returns the model for chaining.

    Only for inference: int8 and compile replace modules that cannot be trained or saved as a checkpoint.
    """
    if mode not in MODES:
        raise ValueError(f"unknown acceleration {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "exact":
        set_fused_attention(model, False)
        return model
    set_fused_attention(model, True)
    enc = model.image_encoder
    if mode == "int8":
        from torch.ao.quantization import quantize_dynamic

        model.image_encoder = quantize_dynamic(enc, {nn.Linear}, dtype=torch.qint8)  # type: ignore[assignment]
    elif mode == "compile":
        compiled = torch.compile(enc, dynamic=False)
        compiled.img_size = enc.img_size  # type: ignore[attr-defined]
        if model.is_hq:  # HQ-SAM encodes through forward_with_interm: compile that too
            encode: Any = enc.forward_with_interm  # (no HQ model has a conv encoder)
            compiled.forward_with_interm = torch.compile(encode, dynamic=False)  # type: ignore[attr-defined]
        model.image_encoder = compiled  # type: ignore[assignment]
    elif mode == "bf16":
        model.image_encoder = _Bf16Encoder(enc)  # type: ignore[assignment]
    return model
