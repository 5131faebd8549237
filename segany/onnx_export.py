"""Export SAM's prompt encoder + mask decoder (+ mask postprocessing) to ONNX, for decoding in a browser.

The image encoder is not exported: the annotation server computes the image embedding once per image with
PyTorch, and the browser (onnxruntime-web) runs only the light decoder on every click, as in the paper's data
engine. Two exports:

* `export_decoder` (``segany export-onnx``): one graph with the official graph's inputs and image-sized masks;
* `export_page_decoder` (the annotation page): a per-image graph and a per-click graph that returns low-res
  logits only (see the section at the end of this file).

The single graph, below, has two deliberate differences from the official export script:

* Mask postprocessing (upsample to the model input size, crop away the padding, resize to the original image
  size) takes every size from the ``orig_im_size`` input at run time. The official graph slices with ends that
  the legacy tracer freezes to the export-time dummy size, which gives wrong full-size masks for any other
  aspect ratio. Here the crop is a gather of ``arange(h_in)`` rows and the final resize takes its output size
  from the shapes of ``arange(H)``/``arange(W)``, which the tracer records as dynamic ops; the tests compare
  the graph with the torch path on several aspect ratios.
* All four mask tokens are returned (token 0 is the single-mask output, tokens 1-3 the three ambiguous masks),
  so a caller can cycle through the ambiguous masks without another decode.

Inputs (float32): ``image_embeddings`` 1xCxhxw, ``point_coords`` 1xNx2 (x, y in the model input frame, i.e.
after ``ResizeLongestSide.apply_coords``), ``point_labels`` 1xN (1 fg, 0 bg, 2/3 box corners, -1 padding; the
caller appends one (0, 0)/-1 padding point when there is no box, as the prompt encoder does), ``mask_input``
1x1x(4h)x(4w), ``has_mask_input`` [1], ``orig_im_size`` [2] = (H, W).
Outputs: ``masks`` 1x4xHxW logits (threshold at 0), ``iou_predictions`` 1x4, ``low_res_masks`` 1x4x(4h)x(4w).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

INPUT_NAMES = [
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]
OUTPUT_NAMES = ["masks", "iou_predictions", "low_res_masks"]
DEFAULT_OPSET = 17


def _embed_points(pe: Any, img_size: int, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The prompt encoder's point embedding, written without boolean indexing (one graph for any N)."""
    coords = (coords + 0.5) / img_size  # pixel centres, normalised to [0, 1]
    coords = 2 * coords - 1
    coords = coords @ pe.pe_layer.positional_encoding_gaussian_matrix
    coords = 2 * math.pi * coords
    emb = torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)
    lab = labels.unsqueeze(-1)
    # Label-masked sums instead of boolean indexing: the same arithmetic for any N, no control flow.
    emb = emb * (lab != -1).to(emb.dtype)
    emb = emb + pe.not_a_point_embed.weight * (lab == -1).to(emb.dtype)
    for i in range(pe.num_point_embeddings):
        emb = emb + pe.point_embeddings[i].weight * (lab == i).to(emb.dtype)
    return emb


class SamDecoderOnnx(nn.Module):
    """Prompt encoder + mask decoder + postprocessing of a SAM model, written without data-dependent control flow.

    ``sam`` is any module with ``prompt_encoder`` and ``mask_decoder`` attributes laid out like the official
    ``Sam`` (segany's or segment_anything's); weights are shared, not copied.
    """

    # Typed loosely: the official and segany's modules have the same attributes but no shared base class.
    prompt_encoder: Any
    mask_decoder: Any
    # This graph ignores an HQ token: HQ-SAM decoders are exported by `segany.onnx_export_hq.HqDecoderOnnx`,
    # which sets this and takes the image-side HQ features as an input.
    takes_hq_features = False

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        if getattr(sam.mask_decoder, "hq", False) and not self.takes_hq_features:
            raise ValueError(
                "SamDecoderOnnx would drop HQ-SAM's HQ token (it has no HQ-features input); export HQ-SAM "
                "decoders with segany.onnx_export_hq.export_hq_decoder"
            )
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        size = self.prompt_encoder.input_image_size
        if size[0] != size[1]:
            raise ValueError(f"only square model inputs are supported, got {size}")
        self.img_size = int(size[0])

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _embed_points(self.prompt_encoder, self.img_size, coords, labels)

    def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        downscaled = pe.mask_downscaling(mask_input)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * downscaled + (1 - has_mask_input) * no_mask

    def _taps(
        self, n_out: torch.Tensor, n_crop: torch.Tensor, n_low: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Indices into the low-res axis and weights giving, for each output pixel along one axis, the value of
        ``upsample(low, img_size)[:n_crop]`` resized to ``n_out`` (both bilinear, align_corners=False).

        Each step is F.interpolate's rule: sample at ``(dst + 0.5) * in/out - 0.5``, clamped at 0, upper
        neighbour clamped to the last index. Composing two 2-tap steps gives 4 taps into the low-res axis.
        """
        # A tensor end makes the tracer record a dynamic Range op (a Python int would be frozen into the graph).
        dst = torch.arange(n_out.to(torch.int64), dtype=torch.float32)  # type: ignore[call-overload]
        src = torch.minimum(torch.clamp((dst + 0.5) * (n_crop / n_out) - 0.5, min=0.0), n_crop - 1)
        j0 = torch.floor(src)
        a = src - j0
        j1 = torch.minimum(j0 + 1, n_crop - 1)
        taps = []
        for j, w in ((j0, 1 - a), (j1, a)):
            t = torch.clamp((j + 0.5) * (n_low / self.img_size) - 0.5, min=0.0)
            k0 = torch.floor(t)
            b = t - k0
            k1 = torch.clamp(k0 + 1, max=n_low - 1)
            taps += [(k0.to(torch.int64), w * (1 - b)), (k1.to(torch.int64), w * b)]
        return taps

    def _postprocess(self, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """``Sam.postprocess_masks`` with the crop and output sizes computed in the graph from ``orig_im_size``."""
        s = self.img_size
        up = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)
        h, w = orig_im_size[0], orig_im_size[1]
        scale = s / torch.maximum(h, w)
        h_in = torch.floor(h * scale + 0.5).to(torch.int64)
        w_in = torch.floor(w * scale + 0.5).to(torch.int64)
        # Tensor ends make the tracer record dynamic Range ops (Python ints would be frozen into the graph).
        crop = up.index_select(2, torch.arange(h_in)).index_select(3, torch.arange(w_in))  # type: ignore[call-overload]
        ys = torch.arange(h.to(torch.int64))  # type: ignore[call-overload]
        xs = torch.arange(w.to(torch.int64))  # type: ignore[call-overload]
        return F.interpolate(crop, size=(ys.shape[0], xs.shape[0]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )[:2]
        masks = self._postprocess(low_res, orig_im_size)
        return masks, iou, low_res


def dummy_inputs(sam: nn.Module, num_points: int = 3) -> dict[str, torch.Tensor]:
    """Example inputs of the right shapes (used for tracing and smoke runs)."""
    pe: Any = sam.prompt_encoder
    h, w = pe.image_embedding_size
    size = int(pe.input_image_size[0])
    gen = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, pe.embed_dim, h, w, generator=gen),
        "point_coords": torch.randint(0, size, (1, num_points, 2), generator=gen).float(),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=gen).float(),
        "mask_input": torch.zeros(1, 1, 4 * h, 4 * w),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }


def write_graph(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    out: str | Path,
    input_names: list[str],
    output_names: list[str],
    *,
    opset: int,
    quantize: bool,
) -> None:
    """Trace ``model`` on ``inputs`` (a dynamic number of points, image-sized ``masks``) into ``out``, written
    atomically; with ``quantize``, onnxruntime's dynamic QUInt8 weight quantisation in its place and the fp32
    graph kept as ``<out>.fp32.onnx``. Shared by the SAM, SAM 2 and HQ-SAM decoder exports."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fp32_path = out.with_suffix(".fp32.onnx") if quantize else out
    tmp = fp32_path.with_name(fp32_path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(inputs.values()),
            str(tmp),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes={
                "point_coords": {1: "num_points"},
                "point_labels": {1: "num_points"},
                "masks": {2: "height", 3: "width"},
            },
            opset_version=opset,
            do_constant_folding=True,
            export_params=True,
            dynamo=False,  # the dynamo exporter cannot trace the grid built from orig_im_size
        )
    tmp.replace(fp32_path)
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        qtmp = out.with_name(out.name + ".tmp")
        quantize_dynamic(
            str(fp32_path), str(qtmp), per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8
        )
        qtmp.replace(out)


def export_decoder(
    sam: nn.Module, out: str | Path, *, opset: int = DEFAULT_OPSET, quantize: bool = False
) -> dict[str, Any]:
    """Write the decoder graph to ``out`` (and, with ``quantize``, an int8 version in its place).

    Returns a small description (paths, sizes, input/output names) that the CLI prints and the server caches.
    ``quantize`` applies onnxruntime's dynamic QUInt8 weight quantisation (about half the download and faster
    MatMuls in wasm); the fp32 file is kept next to it as ``<out>.fp32.onnx``.
    """
    if opset < 16:
        raise ValueError("opset must be >= 16 (GridSample)")
    model = SamDecoderOnnx(sam).eval()
    write_graph(model, dummy_inputs(sam), out, INPUT_NAMES, OUTPUT_NAMES, opset=opset, quantize=quantize)
    return graph_description(sam, out, INPUT_NAMES, OUTPUT_NAMES, opset=opset, quantize=quantize)


def graph_description(
    sam: nn.Module,
    out: str | Path,
    inputs: list[str],
    outputs: list[str],
    *,
    opset: int,
    quantize: bool,
) -> dict[str, Any]:
    """What every decoder export returns (and `segany export-onnx` prints): the written file, its names and the
    image-embedding shape it expects; family exports add their extra inputs' shapes."""
    pe: Any = sam.prompt_encoder
    out = Path(out)
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "quantized": quantize,
        "opset": opset,
        "inputs": inputs,
        "outputs": outputs,
        "image_size": int(pe.input_image_size[0]),
        "embedding_shape": [1, int(pe.embed_dim), *map(int, pe.image_embedding_size)],
    }


# ---- The annotation page's decoder: a per-image graph and a per-click graph --------------------------------------
#
# The page needs the low-resolution logits only (it upsamples and thresholds the chosen mask itself, at the image's
# size, in its worker), and everything that does not depend on the prompt is computed once per image:
#
# * per image (``PageImageGraph``): the image tokens (embedding + the no-mask dense embedding) and, for the first
#   two-way block, the token->image keys and values and the image->token queries of those tokens;
# * per click (``PageClickGraph``): the prompt tokens, the rest of the transformer and the output upscaling.
#   A mask input moves the first block's image tokens by ``dense(mask) - no_mask``, whose last layer is a 1x1
#   convolution from ``mask_in_chans`` (16) channels: its effect on the precomputed projections is a 16-wide
#   matmul with the composed weights, not a new 256-wide projection.
#   Attention between a few tokens (T ~ 7) and the N image tokens is folded onto the token side where the image
#   tokens change per click (``softmax((q Wk) x^T)``, ``(A x) Wv``, ``A (v Wo)``); the output upscaling runs
#   channels-last as matmuls (each 2x2 stride-2 transposed convolution is a per-pixel linear map), with the
#   pixel shuffle applied once, to the four mask planes at the end.
# * LayerNorms over the image tokens are written as ``x_c / sqrt(mean(x_c^2) + eps) * weight`` of an input ``x_c``
#   that is centred where it is made (the image tokens are centred once per image, the rows added per click are
#   centred on the token side, the upscaling's weights are centred per output group), and their bias is carried
#   to where the tokens are read: the next keys' positional term, the attention values (softmax rows sum to 1) and
#   the upscaling's bias. onnxruntime fuses that form into ``SimplifiedLayerNormalization``, which in
#   onnxruntime-web's wasm build takes ~1/6 of the time of ``LayerNormalization`` (4096x256: 1.0 vs 6.9 ms).
#
# Same math as ``MaskDecoder``, summed in a different order: logits agree to ~1e-6 (tests/test_page_decoder.py).

PAGE_IMAGE_INPUTS = ["image_embeddings"]
PAGE_IMAGE_OUTPUTS = ["image_tokens", "t2i_keys", "t2i_values", "i2t_queries"]
PAGE_CLICK_INPUTS = [
    *PAGE_IMAGE_OUTPUTS, "point_coords", "point_labels", "mask_input", "has_mask_input", "upscale_rows",
]  # fmt: skip
PAGE_CLICK_OUTPUTS = ["low_res_masks", "iou_predictions", "rest_keys", "hyper"]
PAGE_UPSCALE_INPUTS = ["rest_keys", "hyper"]
PAGE_UPSCALE_OUTPUTS = ["low_res_masks"]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """N x (H*d) -> H x N x d."""
    n, hd = x.shape
    return x.reshape(n, heads, hd // heads).transpose(0, 1)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm of an already centred ``x`` without its bias (the pattern onnxruntime fuses, see above)."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _centred(x: torch.Tensor) -> torch.Tensor:
    """``x`` minus its mean over the last axis."""
    return x - x.mean(-1, keepdim=True)


def _linear_weights(lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return lin.weight.detach().double(), lin.bias.detach().double()


class _PageParts(nn.Module):
    """What both page graphs read from a SAM decoder: attention handles and a few composed constants."""

    prompt_encoder: Any
    mask_decoder: Any
    key_pe: torch.Tensor
    no_mask: torch.Tensor
    mask_wl_t: torch.Tensor
    mask_off: torch.Tensor
    mask_gk: torch.Tensor
    mask_ck: torch.Tensor
    mask_gv: torch.Tensor
    mask_cv: torch.Tensor
    mask_gq: torch.Tensor
    mask_cq: torch.Tensor
    up_w1: torch.Tensor
    up_b1: torch.Tensor

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        if getattr(sam.mask_decoder, "hq", False):
            raise ValueError("the page decoder does not support HQ-SAM decoders")
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        pe = self.prompt_encoder
        size = pe.input_image_size
        if size[0] != size[1]:
            raise ValueError(f"only square model inputs are supported, got {size}")
        self.img_size = int(size[0])
        self.blocks = list(self.mask_decoder.transformer.layers)
        blk0 = self.blocks[0]
        if not blk0.skip_first_layer_pe:
            raise ValueError("the first two-way block must skip the positional term (as SAM's)")
        with torch.no_grad():
            key_pe = pe.get_dense_pe().flatten(2)[0].t().contiguous()  # N x C
            no_mask = pe.no_mask_embed.weight.detach()[0]  # C
        self.register_buffer("key_pe", key_pe, persistent=False)
        self.register_buffer("no_mask", no_mask.clone(), persistent=False)
        # Mask input: dense(mask) - no_mask = h @ Wl^T + off, h the 16-channel map before the last 1x1
        # convolution. Through block 0's projections W it moves them by h @ (W Wl)^T + W off: folded into the
        # attention below as 16-wide products, never a new N x I projection.
        last = pe.mask_downscaling[-1]
        wl = last.weight.detach().double()[:, :, 0, 0]  # C x 16
        off = last.bias.detach().double() - no_mask.double()  # C
        blk_t2i, blk_i2t = blk0.cross_attn_token_to_image, blk0.cross_attn_image_to_token
        self.register_buffer("mask_wl_t", _centred(wl.t()).float().contiguous(), persistent=False)  # 16 x C
        self.register_buffer("mask_off", off.float(), persistent=False)  # C
        for name, lin in (("k", blk_t2i.k_proj), ("v", blk_t2i.v_proj), ("q", blk_i2t.q_proj)):
            w = lin.weight.detach().double()
            self.register_buffer(f"mask_g{name}", (w @ wl).float(), persistent=False)  # I x 16
            self.register_buffer(f"mask_c{name}", (w @ off).float(), persistent=False)  # I
        heads, tok_heads = blk_i2t.num_heads, blk_t2i.num_heads
        if heads != tok_heads:
            raise ValueError("both cross attentions of block 0 must have the same number of heads")
        self.embed_dim = int(pe.embed_dim)
        self.internal = int(blk0.cross_attn_token_to_image.internal_dim)
        # Each block's image tokens leave its norm4 without the bias (see `_rms`): the next reader adds it.
        for i, blk in enumerate(self.blocks):
            self.register_buffer(
                f"key_pe_{i}", (key_pe.double() + blk.norm4.bias.detach().double()).float(), persistent=False
            )  # N x C: block i's output tokens + bias + positional term, as the next block's keys read them
        # The output upscaling reads the last block's tokens: its bias moves through the first transposed
        # convolution; the weights are centred per output group, so that its LayerNorm input is centred.
        conv1 = self.mask_decoder.output_upscaling[0]
        c1 = conv1.out_channels
        w1 = conv1.weight.detach().double().permute(0, 2, 3, 1).reshape(-1, 4, c1)  # Cin x 4 x C1
        b1 = self.blocks[-1].norm4.bias.detach().double() @ w1.flatten(
            1
        ) + conv1.bias.detach().double().repeat(4)
        self.register_buffer("up_w1", _centred(w1).flatten(1).float(), persistent=False)  # Cin x (4*C1)
        self.register_buffer("up_b1", _centred(b1.reshape(4, c1)).float(), persistent=False)  # 4 x C1


class PageImageGraph(nn.Module):
    """Per image: ``image_embeddings`` 1xCxhxw -> image tokens N x C (centred per token: block 0's norm4 reads
    them) and block 0's projections of them: the token->image keys (H x d x N) and values (H x N x d), the
    image->token queries (N x I)."""

    def __init__(self, parts: _PageParts) -> None:
        super().__init__()
        self.p = parts

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = self.p
        blk = p.blocks[0]
        tokens = image_embeddings[0].flatten(1).t() + p.no_mask  # N x C
        with_pe = tokens + p.key_pe
        heads = blk.cross_attn_token_to_image.num_heads
        keys = _split_heads(blk.cross_attn_token_to_image.k_proj(with_pe), heads).transpose(1, 2)  # H x d x N
        values = _split_heads(blk.cross_attn_token_to_image.v_proj(tokens), heads)  # H x N x d
        queries = blk.cross_attn_image_to_token.q_proj(with_pe)  # N x I
        return _centred(tokens), keys.contiguous(), values.contiguous(), queries


class PageClickGraph(nn.Module):
    """Per click: prompts + the per-image tensors -> ``low_res_masks`` 1x4xsxs, ``iou_predictions`` 1x4."""

    def __init__(self, parts: _PageParts) -> None:
        super().__init__()
        self.p = parts

    # -- attention, folded -------------------------------------------------------------------------------------

    @staticmethod
    def _value_out(attn: Any, tok: torch.Tensor) -> torch.Tensor:
        """Tokens' values through the output projection per head: (H*T) x C, the output bias split over heads."""
        h = attn.num_heads
        v = _split_heads(attn.v_proj(tok), h)  # H x T x d
        w_o = attn.out_proj.weight  # C x (H*d)
        w_o = w_o.reshape(w_o.shape[0], h, -1).permute(1, 2, 0)  # H x d x C
        return (v @ w_o + attn.out_proj.bias / h).flatten(0, 1)

    @staticmethod
    def _token_to_image(
        attn: Any, q_tok: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor, v_bias: torch.Tensor
    ) -> torch.Tensor:
        """``attn(q_tok, k_img, v_img + v_bias)`` folded onto the T query tokens (image tokens N x C, per click);
        ``v_bias`` (C) is added after the softmax-weighted sum (its rows sum to 1)."""
        h = attn.num_heads
        d = attn.internal_dim // h
        q = _split_heads(attn.q_proj(q_tok), h)  # H x T x d
        w_k = attn.k_proj.weight.reshape(h, d, -1)  # H x d x C
        qk = ((q @ w_k) / math.sqrt(d)).flatten(
            0, 1
        )  # (H*T) x C; the key bias shifts each row: softmax ignores it
        a = torch.softmax(qk @ k_img.t(), dim=-1)  # (H*T) x N
        av = (a @ v_img + v_bias).reshape(h, q.shape[1], -1)  # H x T x C
        w_v = attn.v_proj.weight.reshape(h, d, -1)  # H x d x C
        v = av @ w_v.transpose(1, 2) + attn.v_proj.bias.reshape(h, 1, d)  # H x T x d
        return attn.out_proj(v.transpose(0, 1).flatten(1))

    @staticmethod
    def _image_to_token(
        attn: Any, q_img: torch.Tensor, k_tok: torch.Tensor, v_tok: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``attn(q_img, k_tok, v_tok)`` for N image queries, folded: ``a @ vo`` with ``a`` N x (H*T) (each head's
        weights sum to 1) and ``vo`` (H*T) x C, returned apart so the caller can shift and centre ``vo``."""
        h = attn.num_heads
        d = attn.internal_dim // h
        k = _split_heads(attn.k_proj(k_tok), h)  # H x T x d
        t = k.shape[-2]
        w_q = attn.q_proj.weight.reshape(h, d, -1)  # H x d x C
        kq = ((k @ w_q) / math.sqrt(d)).flatten(0, 1)  # (H*T) x C
        kb = ((k @ attn.q_proj.bias.reshape(h, d, 1)) / math.sqrt(d)).flatten()  # (H*T)
        scores = q_img @ kq.t() + kb  # N x (H*T)
        a = torch.softmax(scores.reshape(-1, h, t), dim=-1).flatten(1)
        return a, PageClickGraph._value_out(attn, v_tok)

    # -- the graph ---------------------------------------------------------------------------------------------

    def forward(
        self,
        image_tokens: torch.Tensor,
        t2i_keys: torch.Tensor,
        t2i_values: torch.Tensor,
        i2t_queries: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        upscale_rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.p
        dec = p.mask_decoder
        tr = dec.transformer
        sparse = _embed_points(p.prompt_encoder, p.img_size, point_coords, point_labels)[0]  # T_p x C
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens, sparse], dim=0)  # T x C
        n_out = out_tokens.shape[0]

        # h: has_mask * the mask's 16-channel map (16 x N); see _PageParts
        h16 = p.prompt_encoder.mask_downscaling[:-1](mask_input)[0].flatten(1) * has_mask_input
        h16_t = h16.t()  # N x 16

        # block 0: the image tokens' projections come precomputed (t2i_keys H x d x N, t2i_values H x N x d,
        # i2t_queries N x I); the mask input enters through 16-wide products.
        blk = p.blocks[0]
        queries = blk.norm1(blk.self_attn(tokens[None], tokens[None], tokens[None])[0])
        attn = blk.cross_attn_token_to_image
        h = attn.num_heads
        d = attn.internal_dim // h
        q = _split_heads(attn.q_proj(queries + tokens), h)  # H x T x d
        t = q.shape[1]
        q = q / math.sqrt(d)
        # q.(k + h Gk^T + has ck): the has*q.ck term is constant along the softmax axis, so it is dropped
        gk = p.mask_gk.reshape(h, d, -1)  # H x d x 16
        logits = q @ t2i_keys + (q @ gk) @ h16  # H x T x N
        a = torch.softmax(logits, dim=-1)
        gv = p.mask_gv.reshape(h, d, -1).transpose(1, 2)  # H x 16 x d
        av = a @ t2i_values + (a @ h16_t) @ gv + p.mask_cv.reshape(h, 1, d) * has_mask_input  # H x T x d
        queries = blk.norm2(queries + attn.out_proj(av.transpose(0, 1).flatten(1)))
        queries = blk.norm3(queries + blk.mlp(queries))
        attn = blk.cross_attn_image_to_token
        k = attn.k_proj(queries + tokens) / math.sqrt(d)  # T x I
        # block-diagonal heads: column (head g, token j) holds head g's key of token j
        ones_t = torch.ones_like(k[:, 0])  # T (a traced size: any number of points)
        block = (torch.eye(h)[:, None, :, None] * ones_t).expand(-1, d, -1, -1).reshape(h * d, -1)
        k_bd = k.t().repeat(1, h) * block  # I x (H*T)
        k_heads = _split_heads(k, h)  # H x T x d
        gq = (k_heads @ p.mask_gq.reshape(h, d, -1)).flatten(0, 1).t()  # 16 x (H*T)
        cq = (k_heads @ p.mask_cq.reshape(h, d, 1)).flatten()  # H*T
        scores = i2t_queries @ k_bd + h16_t @ gq + cq * has_mask_input  # N x (H*T)
        a = torch.softmax(scores.reshape(-1, h, t), dim=-1).flatten(1)
        # keys = tokens + dense delta + attention output, in one product: [a | h] @ [V Wo + has off / H ; Wl^T],
        # every term centred (the image tokens per image, Wl^T in _PageParts, these rows here), then norm4
        vo = _centred(self._value_out(attn, queries) + p.mask_off * has_mask_input / h)  # (H*T) x C
        x = image_tokens + torch.cat([a, h16_t], dim=1) @ torch.cat([vo, p.mask_wl_t], dim=0)
        keys = _rms(x, blk.norm4.weight, blk.norm4.eps)  # block 0's output tokens, less norm4's bias
        bias = blk.norm4.bias
        ones = torch.full((keys.shape[1], 1), 1.0 / keys.shape[1])  # means by a product (no ReduceMean)

        for i, blk in enumerate(p.blocks[1:]):
            q_in = queries + tokens
            queries = blk.norm1(queries + blk.self_attn(q_in[None], q_in[None], queries[None])[0])
            kp = keys + getattr(p, f"key_pe_{i}")  # the previous block's bias and the positional term
            queries = blk.norm2(
                queries
                + self._token_to_image(blk.cross_attn_token_to_image, queries + tokens, kp, keys, bias)
            )
            queries = blk.norm3(queries + blk.mlp(queries))
            a, vo = self._image_to_token(blk.cross_attn_image_to_token, kp, queries + tokens, queries)
            # keys + bias + a @ vo, centred: each head's weights sum to 1, so bias / H on every row adds bias
            vo = _centred(vo + bias / blk.cross_attn_image_to_token.num_heads)
            x = keys - keys @ ones + a @ vo
            keys, bias = _rms(x, blk.norm4.weight, blk.norm4.eps), blk.norm4.bias

        # final attention: only the IoU and mask tokens are read afterwards
        qo, to = queries[:n_out], tokens[:n_out]
        kp = keys + getattr(p, f"key_pe_{len(p.blocks) - 1}")
        qo = tr.norm_final_attn(
            qo + self._token_to_image(tr.final_attn_token_to_image, qo + to, kp, keys, bias)
        )

        iou = dec.iou_prediction_head(qo[0:1])  # 1 x 4
        hyper = torch.stack(
            [mlp(qo[1 + i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )  # C/8 x 4
        # Only the first `upscale_rows` embedding rows now (those the image's pixels read); the rest, which
        # covers the resize padding only, is returned for `PageUpscaleGraph` (the page runs it after showing the
        # mask, so that a corrective click can feed back the whole low-res plane, as SamPredictor's).
        ww = p.prompt_encoder.image_embedding_size[1]
        split = upscale_rows.to(torch.int64)[0] * ww
        n = keys.shape[0]
        # Tensor ends make the tracer record dynamic Range ops (Python ints would be frozen into the graph).
        shown = keys.index_select(0, torch.arange(split))  # type: ignore[call-overload]
        rest = keys.index_select(0, torch.arange(split, n))  # type: ignore[call-overload]
        return _upscale(p, shown, hyper), iou, rest, hyper


class PageUpscaleGraph(nn.Module):
    """The output upscaling alone: image tokens (M x C, whole embedding rows) + hypernetwork weights (C/8 x 4)
    -> ``low_res_masks`` 1 x 4 x (4 M / w) x 4w."""

    def __init__(self, parts: _PageParts) -> None:
        super().__init__()
        self.p = parts

    def forward(self, rest_keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        return _upscale(self.p, rest_keys, hyper)


def _upscale(p: _PageParts, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
    """``output_upscaling`` + hypernetwork product, channels-last: M x C (whole rows of the last block's tokens,
    less its norm4 bias) -> 1 x 4 x 4r x 4w."""
    conv1, norm, act1, conv2, act2 = p.mask_decoder.output_upscaling
    ww = p.prompt_encoder.image_embedding_size[1]
    c1, c2 = conv1.out_channels, conv2.out_channels
    # the first transposed convolution with the bias and the centring folded in (`_PageParts`): N x 4 x C1
    x = (keys @ p.up_w1).reshape(-1, 4, c1) + p.up_b1
    x = act1(_rms(x, norm.weight, norm.eps) + norm.bias)
    w2 = conv2.weight.permute(0, 2, 3, 1).flatten(1)  # C1 x (2*2*C2)
    x = act2((x @ w2).reshape(-1, 16, c2) + conv2.bias)  # N x (a, b, a', b') x C2
    m = x @ hyper  # N x 16 x 4
    m = m.reshape(-1, ww, 2, 2, 2, 2, 4).permute(6, 0, 2, 4, 1, 3, 5)  # 4 x r x a x a' x w x b x b'
    return m.reshape(1, 4, -1, 4 * ww)


PAGE_PARTS = ("image", "upscale")


def page_graph_path(click_path: str | Path, part: str) -> Path:
    """Where `export_page_decoder` writes its per-image (``part="image"``) or upscaling (``"upscale"``) graph,
    next to the per-click graph ``click_path``."""
    if part not in PAGE_PARTS:
        raise ValueError(f"part must be one of {PAGE_PARTS}, got {part!r}")
    click_path = Path(click_path)
    return click_path.with_name(f"{click_path.stem}.{part}.onnx")


def page_image_graph_path(click_path: str | Path) -> Path:
    """`page_graph_path` of the per-image graph."""
    return page_graph_path(click_path, "image")


def page_upscale_rows(height: int, width: int, img_size: int, emb_h: int) -> int:
    """Embedding rows whose upscaled logits the image's pixels read: those covering the resized image (the rest
    covers the padding), plus one low-res row of margin for the bilinear taps (as the page computes it)."""
    s = img_size / max(height, width)
    h_in = math.floor(height * s + 0.5)
    low = 4 * emb_h
    low_rows = min(low, math.ceil(h_in * low / img_size) + 1)
    return min(emb_h, math.ceil(low_rows / 4))


def optimize_for_page(path: str | Path) -> None:
    """Rewrite the ONNX graph at ``path`` as onnxruntime's extended graph optimisations leave it (constant
    folding, MatMul + scale/transpose, Gelu and LayerNorm fusions), so that the page can create its sessions with
    optimisation off: onnxruntime-web's optimiser takes ~2/3 of a session's creation (default model's three
    graphs in node, 2 threads: 257 -> 83 ms) and gives the same graph. The fused operators (com.microsoft
    FusedMatMul, FusedGemm, BiasGelu, SimplifiedLayerNormalization) are all in onnxruntime-web's wasm build;
    level "all" is not used, as its layout changes are specific to the exporting machine's CPU.
    """
    import onnxruntime as ort

    path = Path(path)
    tmp = path.with_name(path.name + ".opt.tmp")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp)
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    tmp.replace(path)


def export_page_decoder(
    sam: nn.Module,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: bool = False,
    optimize: bool = True,
) -> dict[str, Any]:
    """Write the page's three graphs: the per-click graph at ``out``, the per-image and upscaling ones at
    `page_graph_path`\\ (``out``, part); ``out`` is written last, so its existence means all are complete.

    ``quantize`` applies onnxruntime's dynamic int8 weight quantisation to the MatMuls with constant weights of
    the per-click and upscaling graphs (mostly the output upscaling: the attention is folded into products of
    activations, which stay float32). The page's masks then differ from the predictor's at some boundary pixels;
    the default is float32.

    ``optimize`` (default) saves each graph as onnxruntime's optimiser leaves it (`optimize_for_page`): load
    them with ``graphOptimizationLevel: "disabled"`` (the page's ``optimized`` flag), which computes the same
    numbers as optimising the raw graph in the browser, only sooner.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = _PageParts(sam).eval()
    pe = parts.prompt_encoder
    h, w = pe.image_embedding_size
    c = parts.embed_dim
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(1, c, h, w, generator=gen)
    image_graph = PageImageGraph(parts).eval()
    click_graph = PageClickGraph(parts).eval()
    image_path = page_image_graph_path(out)
    upscale_path = page_graph_path(out, "upscale")

    def _export(
        model: nn.Module, args: tuple, path: Path, names: tuple[list[str], list[str]], dyn: dict
    ) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with torch.no_grad():
            torch.onnx.export(
                model, args, str(tmp), input_names=names[0], output_names=names[1], dynamic_axes=dyn,
                opset_version=opset, do_constant_folding=True, export_params=True, dynamo=False,
            )  # fmt: skip
        if quantize and path != image_path:  # the per-click and upscaling graphs
            from onnxruntime.quantization import QuantType, quantize_dynamic

            qtmp = path.with_name(path.name + ".q.tmp")
            quantize_dynamic(
                str(tmp), str(qtmp), per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8
            )
            qtmp.replace(tmp)
        if optimize:
            optimize_for_page(tmp)
        tmp.replace(path)

    with torch.no_grad():
        image_out = image_graph(emb)
    _export(image_graph, (emb,), image_path, (PAGE_IMAGE_INPUTS, PAGE_IMAGE_OUTPUTS), {})
    n = 3
    click_args = (
        *image_out,
        torch.randint(0, parts.img_size, (1, n, 2), generator=gen).float(),
        torch.tensor([[1.0, 0.0, -1.0]]),
        torch.zeros(1, 1, 4 * h, 4 * w),
        torch.tensor([1.0]),
        torch.tensor([float(h - 2)]),
    )
    dyn = {
        "point_coords": {1: "num_points"},
        "point_labels": {1: "num_points"},
        "low_res_masks": {2: "rows"},
        "rest_keys": {0: "rest"},
    }
    with torch.no_grad():
        _, _, rest, hyper = click_graph(*click_args)
    up_dyn = {"rest_keys": {0: "rest"}, "low_res_masks": {2: "rows"}}
    _export(
        PageUpscaleGraph(parts).eval(),
        (rest, hyper),
        upscale_path,
        (PAGE_UPSCALE_INPUTS, PAGE_UPSCALE_OUTPUTS),
        up_dyn,
    )
    _export(click_graph, click_args, out, (PAGE_CLICK_INPUTS, PAGE_CLICK_OUTPUTS), dyn)
    return {
        "path": str(out),
        "image_path": str(image_path),
        "upscale_path": str(upscale_path),
        "bytes": sum(f.stat().st_size for f in (out, image_path, upscale_path)),
        "quantized": quantize,
        "optimized": optimize,
        "opset": opset,
        "image_size": parts.img_size,
        "embedding_shape": [1, c, h, w],
        "mask_input_shape": [1, 1, 4 * h, 4 * w],
    }
