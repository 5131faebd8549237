"""Mask decoder: a two-way transformer over [IoU token, mask tokens, prompt tokens] and the image embedding,
then hypernetwork MLPs that turn each mask token into weights applied to the upscaled image features.

Option ``hq_vit_dim`` (HQ-SAM): one more output token (``hf_token``) whose MLP (``hf_mlp``) is applied to
high-quality features: the upscaled SAM features refined by two 3×3 convs (``embedding_maskfeature``) plus the
upsampled image embedding (``embedding_encoder``) and early encoder features (``compress_vit_feat``). The
returned mask is SAM's (the single-mask token, or with multimask output the best-scored of the three) plus the
HQ token's, or the HQ token's alone with ``hq_token_only``: one mask either way, as the official HQ-SAM.
"""

from __future__ import annotations

import torch
from torch import nn

from segany.modeling.common import MLP, LayerNorm2d


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        hq_vit_dim: int | None = None,
    ) -> None:
        """
        Arguments:
          transformer_dim: channel width of the tokens and the image embedding.
          transformer: the two-way transformer.
          num_multimask_outputs: masks returned for an ambiguous prompt (3); one more token serves the
            unambiguous single-mask case (token 0).
          hq_vit_dim: channels of the encoder's early features; set, it adds HQ-SAM's output token and
            feature fusion (None: plain SAM).
        """
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1  # SAM's tokens (the HQ token is counted apart)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )
        self.hq = hq_vit_dim is not None
        if hq_vit_dim is not None:
            c = transformer_dim
            self.hf_token = nn.Embedding(1, c)
            self.hf_mlp = MLP(c, c, c // 8, 3)
            # early encoder features and the image embedding, each upsampled x4 to the mask features' grid
            self.compress_vit_feat = nn.Sequential(
                nn.ConvTranspose2d(hq_vit_dim, c, kernel_size=2, stride=2),
                LayerNorm2d(c),
                nn.GELU(),
                nn.ConvTranspose2d(c, c // 8, kernel_size=2, stride=2),
            )
            self.embedding_encoder = nn.Sequential(
                nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
                LayerNorm2d(c // 4),
                nn.GELU(),
                nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            )
            self.embedding_maskfeature = nn.Sequential(
                nn.Conv2d(c // 8, c // 4, 3, 1, 1),
                LayerNorm2d(c // 4),
                nn.GELU(),
                nn.Conv2d(c // 4, c // 8, 3, 1, 1),
            )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        hq_token_only: bool = False,
        interm_embeddings: torch.Tensor | None = None,
        hq_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          image_embeddings: 1×C×h×w (one image shared by all prompts) or B×C×h×w (one image per prompt).
          image_pe: 1×C×h×w; sparse: B×N×C; dense: B×C×h×w.
          hq_token_only, interm_embeddings: HQ decoders only: the HQ token's mask alone (else added to SAM's),
            and the encoder's early features 1×h×w×C' or B×h×w×C' (`forward_with_interm`, channels last);
            or instead of those, ``hq_features``: `hq_features` of this image, computed once (the predictor
            caches it: it depends on the image only).
        Returns:
          low-res mask logits B×K×4h×4w and IoU predictions B×K. Plain SAM: K = 3 (multimask) or 1 (token 0).
          HQ: K = 1, with the best-scored multimask output's IoU prediction, or token 0's.
        """
        if not self.hq:
            if hq_token_only or interm_embeddings is not None or hq_features is not None:
                raise ValueError(
                    "hq_token_only, interm_embeddings and hq_features need an HQ-SAM mask decoder"
                )
            masks, iou_pred = self.predict_masks(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
            )
            sl = slice(1, None) if multimask_output else slice(0, 1)
            return masks[:, sl], iou_pred[:, sl]

        if hq_features is None:
            if interm_embeddings is None:
                raise ValueError("an HQ-SAM decoder needs the encoder's early features (interm_embeddings)")
            hq_features = self.hq_features(image_embeddings, interm_embeddings)
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, hq_features
        )
        n = self.num_mask_tokens
        if multimask_output:
            iou_pred, best = torch.max(iou_pred[:, 1:n], dim=1)
            iou_pred = iou_pred[:, None]
            sam_mask = masks[:, 1:n][torch.arange(masks.shape[0]), best][:, None]
        else:
            iou_pred, sam_mask = iou_pred[:, :1], masks[:, :1]
        hq_mask = masks[:, n : n + 1]
        return (hq_mask if hq_token_only else sam_mask + hq_mask), iou_pred

    def hq_features(self, image_embeddings: torch.Tensor, interm_embeddings: torch.Tensor) -> torch.Tensor:
        """HQ-SAM's image-side features (1 or B)×C/8×4h×4w, from the embedding and early features."""
        early = interm_embeddings.permute(0, 3, 1, 2)  # channels last -> B x C' x h x w
        return self.embedding_encoder(image_embeddings) + self.compress_vit_feat(early)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        hq_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' logits (SAM's 4, then the HQ token's with ``hq_features``) and SAM's 4 IoU
        predictions."""
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        if hq_features is not None:
            output_tokens = torch.cat([output_tokens, self.hf_token.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(B, -1, -1), sparse_prompt_embeddings], dim=1)

        if image_embeddings.shape[0] not in (1, B):
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} must be 1 or equal the prompt batch {B}"
            )
        # broadcasting replaces the official repeat_interleave: same values, and B images with B prompts work
        src = image_embeddings + dense_prompt_embeddings
        if src.shape[0] != B:
            src = src.expand(B, -1, -1, -1)
        pos_src = image_pe.expand(B, -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        if hq_features is not None:
            upscaled_hq = self.embedding_maskfeature(upscaled) + hq_features  # B x C/8 x 4h x 4w
            hyper_hq = self.hf_mlp(hs[:, 1 + self.num_mask_tokens, :])[:, None]  # B x 1 x C/8
            masks_hq = (hyper_hq @ upscaled_hq.reshape(b, c, h * w)).reshape(b, 1, h, w)
            masks = torch.cat([masks, masks_hq], dim=1)
        return masks, self.iou_prediction_head(iou_token_out)
