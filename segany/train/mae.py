"""MAE pretraining (He et al., 2022) of SAM's image encoder, as the initialisation of SAM training.

As in ViTDet (whose backbone SAM's encoder is), MAE trains the encoder as a *plain* ViT: the visible 25 % of the
patches, with the absolute position embedding, go through the encoder's own blocks with global attention and no
relative positions (dropping tokens breaks the window grid). The block weights — patch embedding, position
embedding, norms, qkv/proj, MLPs — are exactly the parameters SAM's windowed blocks use, so they transfer one to
one; the relative-position tables and the neck are not pretrained and keep their initialisation.

The small decoder (a few transformer layers at a narrower width) sees the encoded visible tokens plus a shared
mask token at every masked position, and predicts each masked patch's pixels, normalised by that patch's own
mean and variance (MAE's "normalised pixels" target); the loss is the MSE over masked patches only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segany.data.sample import Sample
from segany.modeling.image_encoder import ImageEncoderViT

MAE_FORMAT = "segany-mae-v1"


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, 3, S, S]`` -> ``[B, L, p*p*3]`` with L = (S/p)^2 patches in row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def random_masking(
    b: int, n: int, ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, a random subset of ``n - round(n * ratio)`` visible tokens.

    Returns ``(keep [B, n_keep] long, masked [B, n] bool)``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    n_keep = max(1, n - int(round(n * ratio)))
    noise = torch.rand(b, n, device=device, generator=generator)
    keep = noise.argsort(dim=1)[:, :n_keep]
    masked = torch.ones(b, n, dtype=torch.bool, device=device)
    masked.scatter_(1, keep, False)
    return keep, masked


def _plain_block(block: Any, x: torch.Tensor) -> torch.Tensor:
    """SAM encoder block as a plain global-attention ViT block on a token list ``[B, L, C]``."""
    attn = block.attn
    b, n, c = x.shape
    h = block.norm1(x)
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    x = x + attn.proj(a)
    return x + block.mlp(block.norm2(x))


class MAE(nn.Module):
    """Masked autoencoder around a SAM ``ImageEncoderViT`` (which it trains in place)."""

    def __init__(
        self,
        encoder: ImageEncoderViT,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        if encoder.pos_embed is None:
            raise ValueError("MAE needs the encoder's absolute position embedding")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.patch = encoder.patch_size
        grid = encoder.img_size // encoder.patch_size
        dim = encoder.pos_embed.shape[-1]
        self.enc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.dec_pos = nn.Parameter(torch.zeros(1, grid * grid, decoder_dim))
        layer = nn.TransformerEncoderLayer(
            decoder_dim,
            decoder_heads,
            4 * decoder_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerEncoder(layer, decoder_depth, enable_nested_tensor=False)
        self.dec_norm = nn.LayerNorm(decoder_dim)
        self.head = nn.Linear(decoder_dim, self.patch * self.patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.dec_pos, std=0.02)
        if not bool(
            encoder.pos_embed.detach().any()
        ):  # SAM zero-inits it; MAE needs positions from the start
            nn.init.trunc_normal_(encoder.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``images [B, 3, S, S]`` normalised -> scalar loss (normalised-pixel MSE on masked patches)."""
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed  # B x g x g x C
        b, g, _, c = x.shape
        x = x.reshape(b, g * g, c)
        keep, masked = random_masking(b, g * g, self.mask_ratio, x.device, generator)
        x = x.gather(1, keep[:, :, None].expand(-1, -1, c))
        for blk in enc.blocks:
            x = _plain_block(blk, x)
        y = self.embed(self.enc_norm(x))
        full = self.mask_token.to(y.dtype).expand(b, g * g, -1).clone()
        full.scatter_(1, keep[:, :, None].expand(-1, -1, y.shape[-1]), y)
        pred = self.head(self.dec_norm(self.decoder(full + self.dec_pos)))  # B x L x p*p*3

        target = patchify(images, self.patch)
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred.float() - target) ** 2).mean(-1)
        return (per_patch * masked).sum() / masked.sum()


def save_mae_encoder(path: str | Path, encoder: ImageEncoderViT, sam_config_json: str, step: int) -> None:
    """The pretrained encoder's weights (SAM key names without ``image_encoder.``) with their config."""
    from segany.checkpoint import save_safetensors

    save_safetensors(path, encoder.state_dict())
    # save_safetensors writes SamConfig metadata only; keep the MAE provenance next to it
    Path(path).with_suffix(".json").write_text(
        json.dumps({"format": MAE_FORMAT, "sam_config": json.loads(sam_config_json), "step": step}, indent=2)
        + "\n"
    )


def load_mae_encoder(encoder: ImageEncoderViT, path: str | Path) -> None:
    """Load MAE weights into ``encoder``; only the relative-position tables and the neck may be absent."""
    from segany.checkpoint import CheckpointError, load_state_dict

    sd = load_state_dict(path)
    sd = {k.removeprefix("image_encoder."): v for k, v in sd.items()}
    own = encoder.state_dict()
    missing = [k for k in own if k not in sd and not ("rel_pos" in k or k.startswith("neck."))]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path}: MAE weights do not fit the encoder (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shapes {shapes[:5]})"
        )
    encoder.load_state_dict(sd, strict=False)


@dataclass
class MAEStats:
    step: int
    loss: float


def mae_lr(step: int, total: int, lr: float, warmup: int) -> float:
    """MAE's schedule: linear warmup then half-cycle cosine to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _stack_images(samples: list[Sample]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(s.image.transpose(2, 0, 1).copy()) for s in samples])


def pretrain_mae(
    cfg: object,
    out_dir: str | Path,
    device: str = "cpu",
    max_steps: int | None = None,
    time_budget_min: float | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> tuple[Path, list[float]]:
    """MAE-pretrain the encoder of ``cfg.model`` (a `TrainConfig`) on its data sources' images.

    Writes ``mae_encoder.safetensors`` (+ ``.json``) into ``out_dir`` — use it as ``init: mae:PATH`` for SAM
    training — and returns its path and the loss per step. Periodic saves every ``cfg.ckpt_every_min``; there
    is no exact resume for MAE (a restarted run starts over).
    """
    import time

    import numpy as np
    from tqdm import tqdm

    from segany.build import build_sam
    from segany.train.config import TrainConfig
    from segany.train.data import StepBatches, mixed_stream, open_sources, worker_init
    from segany.train.trainer import augment_config

    if not isinstance(cfg, TrainConfig):
        raise TypeError("cfg must be a TrainConfig")
    m = cfg.mae
    steps = max_steps if max_steps is not None else m.steps
    if steps < 1:
        raise ValueError("MAE needs steps >= 1 (set mae.steps in the config or pass --max-steps)")
    dev = torch.device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    encoder = build_sam(cfg.model).image_encoder
    if not isinstance(encoder, ImageEncoderViT):
        raise ValueError("MAE pretraining needs SAM's ViT encoder (model.encoder_type: vit)")
    mae = MAE(encoder, m.decoder_dim, m.decoder_depth, m.decoder_heads, m.mask_ratio).to(dev).train()
    decay = [p for n, p in mae.named_parameters() if p.ndim > 1 and "pos" not in n and "token" not in n]
    no_decay = [
        p for n, p in mae.named_parameters() if not (p.ndim > 1 and "pos" not in n and "token" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": m.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=m.lr,
        betas=(0.9, 0.95),
    )
    sources = open_sources(cfg.data.sources, data_root or cfg.data.root)
    # geometry only: colour jitter and copy-paste would make pixel reconstruction learn the augmentation
    stream = mixed_stream(
        sources,
        [s.weight for s in cfg.data.sources],
        steps * m.batch_size,
        augment_config(cfg, colour_and_paste=False),
        1.0,
        cfg.seed,
    )
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        stream,  # type: ignore[arg-type]
        batch_sampler=StepBatches(m.batch_size, 0, steps),
        num_workers=cfg.data.num_workers,
        collate_fn=_stack_images,
        pin_memory=dev.type == "cuda",
        worker_init_fn=worker_init if cfg.data.num_workers > 0 else None,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mae_encoder.safetensors"
    mean = torch.tensor(cfg.model.pixel_mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(cfg.model.pixel_std, device=dev).view(1, 3, 1, 1)
    amp_on = cfg.precision == "bf16"
    losses: list[float] = []
    t0 = last = time.monotonic()
    step = 0
    with open(out / "mae_log.jsonl", "w") as log:
        for batch in tqdm(loader, total=steps, disable=not progress, desc="mae"):
            ts = time.monotonic()
            for g in opt.param_groups:
                g["lr"] = mae_lr(step, steps, m.lr, m.warmup_steps)
            x = (batch.to(dev, non_blocking=True).float() - mean) / std
            gen = torch.Generator(device=dev).manual_seed(
                int(np.random.SeedSequence([cfg.seed, step, 7]).generate_state(1)[0])
            )
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp_on):
                loss = mae(x, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            log.write(
                json.dumps({"step": step, "loss": losses[-1], "step_s": round(time.monotonic() - ts, 3)})
                + "\n"
            )
            if time.monotonic() - last > cfg.ckpt_every_min * 60:
                save_mae_encoder(path, encoder, cfg.model.to_json(), step)
                last = time.monotonic()
            if time_budget_min is not None and (time.monotonic() - t0) / 60 > time_budget_min:
                break
    save_mae_encoder(path, encoder, cfg.model.to_json(), step)
    return path, losses
