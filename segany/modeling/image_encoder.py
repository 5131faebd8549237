"""ViT image encoder (ViTDet-style): patch embedding, absolute position embedding, blocks of windowed and
global attention with decomposed relative positions, and a conv neck down to the prompt embedding width.

Layout follows the official checkpoints exactly (parameter names and shapes), so official weights load
unchanged. Blocks work in BHWC, as in the reference, so that window partitioning is a reshape.

Attention uses the reference's arithmetic — `softmax((q·scale) kᵀ + rel_h + rel_w) v` — computed in blocks
of rows so the 4096×4096 logits of a global block never exist in full (bit-identical results, less memory
traffic). `Attention.fused = True` switches to `scaled_dot_product_attention` with the relative-position
term as a bias: faster on some machines, equal up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import LayerNorm2d, MLPBlock, drop_path


class ImageEncoderViT(nn.Module):
    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        rel_pos_zero_init: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
        drop_path_rate: float = 0.0,
    ) -> None:
        """
        Arguments:
          img_size: side of the (square, padded) input image.
          patch_size: patch side; the embedding grid is img_size // patch_size.
          window_size: attention window side for non-global blocks (0 = global everywhere).
          global_attn_indexes: blocks that use global attention.
          drop_path_rate: stochastic depth, linearly increasing over blocks (training only).
        """
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList()
        for i in range(depth):
            self.blocks.append(
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    use_rel_pos=use_rel_pos,
                    rel_pos_zero_init=rel_pos_zero_init,
                    window_size=0 if i in global_attn_indexes else window_size,
                    input_size=(grid, grid),
                    drop_path=drop_path_rate * i / max(depth - 1, 1),
                )
            )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def interm_dim(self) -> int:
        """Channels of `forward_with_interm`'s early features (the embedding width)."""
        return self.patch_embed.proj.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×3×S×S normalised, padded image → B×out_chans×(S/p)×(S/p)."""
        x = self.patch_embed(x)  # B x H x W x C
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def forward_with_interm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the `forward` embedding, early features B×(S/p)×(S/p)×embed_dim): the output of the first
        global-attention block, which HQ-SAM's decoder fuses into its high-quality mask features."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        interm = None
        for blk in self.blocks:
            x = blk(x)
            if interm is None and blk.window_size == 0:
                interm = x
        if interm is None:
            raise ValueError("early features need a global-attention block (global_attn_indexes is empty)")
        return self.neck(x.permute(0, 3, 1, 2)), interm


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; output in BHWC."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block with windowed (or global) attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim) if norm_layer is not None else nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=attn_size,
        )
        self.norm2 = norm_layer(dim) if norm_layer is not None else nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        else:
            x = self.attn(x)
        x = shortcut + drop_path(x, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class Attention(nn.Module):
    """Multi-head self-attention over a BHWC grid with optional decomposed relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        # opt-in fast path: flash attention with the rel-pos term as a bias (not bit-identical, ~1e-6)
        self.fused = False
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        nh = self.num_heads
        # (B·heads) x HW x head_dim each
        qkv = self.qkv(x).reshape(B, H * W, 3, nh, -1).permute(2, 0, 3, 1, 4).reshape(3, B * nh, H * W, -1)
        q, k, v = qkv.unbind(0)
        rel = None
        if self.use_rel_pos:
            rel = decomposed_rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        if self.fused or torch.is_grad_enabled():
            # training (and the opt-in fast path): autograd-friendly fused attention with a bias
            bias = (
                None if rel is None else (rel[0][..., None] + rel[1][..., None, :]).reshape(B, nh, H * W, -1)
            )
            out = F.scaled_dot_product_attention(
                q.view(B, nh, H * W, -1),
                k.view(B, nh, H * W, -1),
                v.view(B, nh, H * W, -1),
                bias,
                scale=self.scale,
            ).reshape(B * nh, H * W, -1)
        else:
            out = blockwise_attention(q, k, v, self.scale, rel, (H, W))
        # (B·heads) x HW x hd -> B x H x W x C
        out = out.view(B, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(out)


# Logits are computed in blocks of about this many floats, so the 4096×4096 per-head attention matrix of
# a global block never exists in full: it is the memory traffic, not the FLOPs, that makes it slow on CPU.
ATTN_BLOCK_ELEMS = 1 << 24


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rel: tuple[torch.Tensor, torch.Tensor] | None,
    hw: tuple[int, int],
) -> torch.Tensor:
    """softmax((q·scale) kᵀ + rel_h + rel_w) v over (batch·heads) × N × d tensors, in blocks of rows.

    The arithmetic is the reference's (same operations in the same order, per row), so results are
    bit-identical to it; only the blocking differs, to keep each logit block in cache.
    """
    BH, N, _ = q.shape
    H, W = hw
    qs = q * scale
    kt = k.transpose(1, 2)
    out = q.new_empty(BH, N, v.shape[-1])
    rows = max(1, min(N, ATTN_BLOCK_ELEMS // N))
    heads = max(1, min(BH, ATTN_BLOCK_ELEMS // (rows * N)))
    # one logits buffer reused by every block: no fresh large allocation (and page faults) per block
    buf = q.new_empty(heads * rows * N)
    for h0 in range(0, BH, heads):
        h1 = min(BH, h0 + heads)
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            logits = buf[: (h1 - h0) * (r1 - r0) * N].view(h1 - h0, r1 - r0, N)
            torch.bmm(qs[h0:h1, r0:r1], kt[h0:h1], out=logits)
            if rel is not None:
                lv = logits.view(h1 - h0, r1 - r0, H, W)
                lv.add_(rel[0][h0:h1, r0:r1, :, None]).add_(rel[1][h0:h1, r0:r1, None, :])
            torch.softmax(logits, dim=-1, out=logits)
            torch.bmm(logits, v[h0:h1], out=out[h0:h1, r0:r1])
    return out


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split B×H×W×C into (B·nW)×ws×ws×C windows, zero-padding bottom/right to a multiple of ws."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`, cropping the padding away."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) offset along one axis: q_size×k_size×C.

    The table is linearly resized when its length differs from 2·max(q, k) − 1 (e.g. other input sizes).
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def decomposed_rel_pos_terms(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of MViTv2's decomposed relative-position bias for (batch·heads)×(qh·qw)×d queries:
    rel_h (…×(qh·qw)×kh) and rel_w (…×(qh·qw)×kw), so that bias[q, (kh, kw)] = rel_h[q, kh] + rel_w[q, kw].

    As in the reference, the *unscaled* query is used.
    """
    qh, qw = q_size
    kh, kw = k_size
    Rh = get_rel_pos(qh, kh, rel_pos_h)
    Rw = get_rel_pos(qw, kw, rel_pos_w)
    BH, _, dim = q.shape
    r_q = q.reshape(BH, qh, qw, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh).reshape(BH, qh * qw, kh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw).reshape(BH, qh * qw, kw)
    return rel_h, rel_w
