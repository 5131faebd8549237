"""SAM 2's mask decoder: SAM's two-way transformer and hypernetworks, plus three things SAM's decoder lacks.

* **High-resolution features.** The encoder's stride-8 and stride-4 maps, projected by ``conv_s1`` / ``conv_s0``
  (applied once per image, at encoding time), are added inside the output upscaling: after the first
  transposed convolution and after the second.
* **An object-score token** (``obj_score_token``, first of the output tokens) and its MLP head
  (``pred_obj_score_head``): a logit for "the prompt's object is in the image". The image predictor does not use
  it by default; ``use_object_score=True`` empties the masks of prompts it scores as absent (as SAM 2's video
  mode does).
* **Dynamic multimask.** For a single-mask request whose mask is unstable (the IoU of its thresholds at ±0.05
  below 0.98), the best-scored of the three multimask outputs is returned instead — SAM 2's default
  post-processing (``dynamic_multimask_via_stability``), applied in eval mode only as in the reference.

The IoU head ends in a sigmoid. The transformer is segany's `TwoWayTransformer` with SAM 2's options
(``token_mlp="layers"``, ``sdpa=True``). Parameter names follow SAM 2's checkpoints (``sam_mask_decoder.*``);
this is the decoder of every released SAM 2 and SAM 2.1 model (high-resolution features, sigmoid IoU head and
MLP object-score head are not options there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import MLP, LayerNorm2d

# The mask logit SAM 2 gives every pixel of a prompt whose object is scored absent.
NO_OBJ_SCORE = -1024.0


def pack_high_res(s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
    """Stride-4 (B×C0×4h'×4w', C0 = C/8) and stride-8 (B×C1×2h'×2w') features as one stride-8 tensor
    B×(4·C0 + C1)×2h'×2w' (the stride-4 map space-to-depth): lossless, so an image's features stay one tensor."""
    return torch.cat([F.pixel_unshuffle(s0, 2), s1], dim=1)


def unpack_high_res(packed: torch.Tensor, s0_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_high_res`: (stride-4 features, stride-8 features)."""
    n0 = 4 * s0_channels
    return F.pixel_shuffle(packed[:, :n0], 2), packed[:, n0:]


class Sam2MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        """
        Arguments:
          transformer_dim: channel width of the tokens and the image embedding (C).
          transformer: the two-way transformer.
          num_multimask_outputs: masks returned for an ambiguous prompt (3); token 0 is the single mask.
          dynamic_multimask_*: the single-mask fallback (on by default, as SAM 2's builder sets it).
        """
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.obj_score_token = nn.Embedding(1, c)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            activation(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)  # stride-4 features, added after the 2nd upscaling
        self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)  # stride-8 features, added after the 1st
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, sigmoid_output=True
        )
        self.pred_obj_score_head = MLP(c, c, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        hq_token_only: bool = False,
        interm_embeddings: torch.Tensor | None = None,
        dynamic_multimask: bool | None = None,
        use_object_score: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's decoder call, with SAM 2's high-resolution features in the slot `SamPredictor` fills with the
        encoder's extra features.

        Arguments:
          image_embeddings: 1×C×h×w (one image for all prompts) or B×C×h×w; image_pe: 1×C×h×w;
            sparse: B×N×C; dense: B×C×h×w.
          interm_embeddings: the high-resolution features, packed (`pack_high_res`), 1 or B in the batch.
          hq_token_only: HQ-SAM only; must be False.
          dynamic_multimask: single-mask fallback to the best multimask output when unstable; None: this
            decoder's setting (on, as SAM 2), in eval mode only.
          use_object_score: give every pixel ``NO_OBJ_SCORE`` for prompts whose object score is ≤ 0.
        Returns:
          low-res mask logits B×K×4h×4w and IoU predictions B×K, K = 3 (multimask) or 1.
        """
        if hq_token_only:
            raise ValueError("hq_token_only needs an HQ-SAM model; this is SAM 2")
        if interm_embeddings is None:
            raise ValueError("SAM 2's decoder needs the image's high-resolution features (interm_embeddings)")
        high_res = unpack_high_res(interm_embeddings, self.transformer_dim // 8)
        masks, iou, obj = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res
        )
        if dynamic_multimask is None:
            dynamic_multimask = self.dynamic_multimask_via_stability and not self.training
        if multimask_output:
            masks, iou = masks[:, 1:], iou[:, 1:]
        elif dynamic_multimask:
            masks, iou = self.dynamic_single_mask(masks, iou)
        else:
            masks, iou = masks[:, :1], iou[:, :1]
        if use_object_score:
            masks = torch.where(obj[:, :, None, None] > 0, masks, NO_OBJ_SCORE)
        return masks, iou

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every mask token's logits B×4×4h×4w, their IoU predictions B×4 and the object-score logit B×1.

        ``high_res_features``: (stride-4 map after ``conv_s0``, stride-8 map after ``conv_s1``), 1 or B in the batch.
        """
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight]
        )
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(B, -1, -1), sparse_prompt_embeddings], dim=1)
        if image_embeddings.shape[0] not in (1, B):
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} must be 1 or equal the prompt batch {B}"
            )
        # Channels-last, the layout SAM 2's predictor hands the embedding over in: the decoder's arithmetic then
        # rounds the same for a fresh embedding, one from a batch, or one reloaded from a file (contiguous).
        src = image_embeddings.contiguous(memory_format=torch.channels_last)
        # one image for several prompts is repeated as the reference does (same values and memory layout)
        if src.shape[0] != B:
            src = torch.repeat_interleave(src, B, dim=0)
        src = src + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, B, dim=0)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        obj_token_out, iou_token_out = hs[:, 0, :], hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]

        s0, s1 = high_res_features
        up1, norm, act1, up2, act2 = self.output_upscaling
        x = src.transpose(1, 2).view(b, c, h, w)
        x = act1(norm(up1(x) + s1))
        x = act2(up2(x) + s0)  # B x C/8 x 4h x 4w
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # B x 4 x C/8
        b, c, h, w = x.shape
        masks = (hyper_in @ x.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out), self.pred_obj_score_head(obj_token_out)

    def stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """IoU of each mask thresholded at +delta and at -delta (1 for an empty mask): B×K."""
        flat = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inter = torch.sum(flat > delta, dim=-1).float()
        union = torch.sum(flat > -delta, dim=-1).float()
        return torch.where(union > 0, inter / union, 1.0)

    def dynamic_single_mask(
        self, mask_logits: torch.Tensor, iou_pred: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token 0's mask where it is stable, else the multimask output with the best predicted IoU: B×1 each."""
        multi_iou = iou_pred[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi_iou.shape[0], device=iou_pred.device)
        best_logits = mask_logits[:, 1:][rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)
        single_logits, single_iou = mask_logits[:, :1], iou_pred[:, :1]
        stable = self.stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh  # B x 1
        logits = torch.where(stable[..., None, None].expand_as(single_logits), single_logits, best_logits)
        return logits, torch.where(stable.expand_as(single_iou), single_iou, best_iou)
