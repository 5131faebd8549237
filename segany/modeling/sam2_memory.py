"""The video-memory weights of SAM 2 checkpoints, kept (unused) so that image mode loads the files unchanged.

A SAM 2 / 2.1 checkpoint also holds the video tracker: memory attention, memory encoder, the temporal position
table of memories (``maskmem_tpos_enc``), the object-pointer projections and a few learned tokens. Image mode
does not compute with them, but segany's strict loader checks every key and shape of a file, so the model
carries them as zero-initialised buffers at their checkpoint names: a file with a malformed memory weight is
refused with that key named, a converted file keeps them, and a later video mode can use them.

`video_memory_layout` lists them (key → shape); they are the same for every size of a release.
"""

from __future__ import annotations

import torch
from torch import nn


def video_memory_layout(
    hidden_dim: int = 256,
    mem_dim: int = 64,
    num_maskmem: int = 7,
    memory_attention_layers: int = 4,
    memory_attention_ff: int = 2048,
    fuser_layers: int = 2,
    sam2_1: bool = True,
) -> dict[str, tuple[int, ...]]:
    """Key → shape of every video-memory weight (SAM 2.1 adds ``no_obj_embed_spatial`` and ``obj_ptr_tpos_proj``)."""
    d, m = hidden_dim, mem_dim
    out: dict[str, tuple[int, ...]] = {
        "maskmem_tpos_enc": (num_maskmem, 1, 1, m),
        "no_mem_pos_enc": (1, 1, d),
        "no_obj_ptr": (1, d),
    }
    if sam2_1:
        out["no_obj_embed_spatial"] = (1, m)

    def linear(name: str, n_out: int, n_in: int) -> None:
        out[f"{name}.weight"] = (n_out, n_in)
        out[f"{name}.bias"] = (n_out,)

    def conv(name: str, n_out: int, n_in: int, k: int) -> None:
        out[f"{name}.weight"] = (n_out, n_in, k, k)
        out[f"{name}.bias"] = (n_out,)

    def norm(name: str, n: int) -> None:
        out[f"{name}.weight"] = (n,)
        out[f"{name}.bias"] = (n,)

    conv("mask_downsample", 1, 1, 4)
    for i in range(memory_attention_layers):
        layer = f"memory_attention.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{layer}.self_attn.{proj}", d, d)
        # cross-attention from the image tokens to the memories (keys and values have mem_dim channels)
        linear(f"{layer}.cross_attn_image.q_proj", d, d)
        linear(f"{layer}.cross_attn_image.k_proj", d, m)
        linear(f"{layer}.cross_attn_image.v_proj", d, m)
        linear(f"{layer}.cross_attn_image.out_proj", d, d)
        linear(f"{layer}.linear1", memory_attention_ff, d)
        linear(f"{layer}.linear2", d, memory_attention_ff)
        for j in (1, 2, 3):
            norm(f"{layer}.norm{j}", d)
    norm("memory_attention.norm", d)
    # mask downsampler: stride-2 3x3 convs with channel LayerNorm (+ GELU) from 1 to d channels, then a 1x1 conv
    chans = [1, 4, 16, 64, d]
    for i in range(4):
        conv(f"memory_encoder.mask_downsampler.encoder.{3 * i}", chans[i + 1], chans[i], 3)
        norm(f"memory_encoder.mask_downsampler.encoder.{3 * i + 1}", chans[i + 1])
    conv("memory_encoder.mask_downsampler.encoder.12", d, d, 1)
    conv("memory_encoder.pix_feat_proj", d, d, 1)
    for i in range(fuser_layers):  # ConvNeXt blocks
        layer = f"memory_encoder.fuser.layers.{i}"
        out[f"{layer}.gamma"] = (d,)
        out[f"{layer}.dwconv.weight"] = (d, 1, 7, 7)
        out[f"{layer}.dwconv.bias"] = (d,)
        norm(f"{layer}.norm", d)
        linear(f"{layer}.pwconv1", 4 * d, d)
        linear(f"{layer}.pwconv2", d, 4 * d)
    conv("memory_encoder.out_proj", m, d, 1)
    for i in range(3):
        linear(f"obj_ptr_proj.layers.{i}", d, d)
    if sam2_1:
        linear("obj_ptr_tpos_proj", m, d)
    return out


class StoredWeights(nn.Module):
    """A container of stored tensors at nested names (no computation)."""


def attach_stored_weights(root: nn.Module, layout: dict[str, tuple[int, ...]]) -> None:
    """Register a zero buffer for every ``dotted.key → shape`` of ``layout`` under ``root``, creating
    `StoredWeights` containers for the intermediate names."""
    for key, shape in layout.items():
        *path, leaf = key.split(".")
        module = root
        for name in path:
            child = module._modules.get(name)
            if child is None:
                child = StoredWeights()
                module.add_module(name, child)
            module = child
        module.register_buffer(leaf, torch.zeros(shape))
