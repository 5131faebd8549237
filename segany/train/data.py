"""From `segany.data`'s mixed, augmented stream of `Sample`s to training batches, deterministically by step.

* `open_sources` opens the configured folders with `segany.data.open_source` (or a pack from
  `segany.train.cache`), refusing the evaluation-only benchmarks.
* `TrainItems` turns a position of the run's item stream into one augmented image in the model's input frame
  with up to ``masks_per_image`` ground-truth masks. The stream is a `MixedDataset` of length steps x batch: item
  ``s * B + j`` is step ``s``'s j-th image, a pure function of ``(seed, s * B + j)``, the same in every worker and
  after every restart — which is what makes resume after a kill exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segany.data.mixed import EVAL_ONLY_FOLDERS, MixedDataset, SampleSource
from segany.data.mixed import open_source as open_folder


@dataclass
class SourceConfig:
    """One training source: a dataset folder (layout auto-detected) or a pack file, relative to the data root.

    ``weight`` is a per-item sampling factor (the paper oversamples its manual masks 10x): a source is drawn
    with probability proportional to ``weight * len(source)`` (for a pack's folder: the folder's item count).
    ``origin`` (packs only) restricts a pack made by ``segany train --pack`` to the entries of one folder.
    """

    root: str
    kind: str = "auto"  # auto | pack
    weight: float = 1.0
    origin: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "pack"):
            raise ValueError(f"source kind must be auto or pack, got {self.kind!r}")
        if self.weight <= 0:
            raise ValueError(f"source weight must be > 0, got {self.weight}")
        if self.origin and self.kind != "pack":
            raise ValueError(f"origin {self.origin!r} applies to a pack source only (kind: pack)")


def sources_from_pack(pack: str | Path, sources: Sequence[SourceConfig]) -> list[SourceConfig]:
    """The configured folder sources, read from a pack of them, each with its configured weight.

    A pack of none of the configured folders replaces them (one uniformly sampled source); packed folders the
    config does not name are left out, with a warning. A pack that does not record its folders (made by
    `pack_samples`, or an older segany) cannot keep the per-folder weights: it becomes one uniformly sampled
    source, and a warning says so.
    """
    import warnings

    from segany.train.cache import read_pack_meta

    root = str(Path(pack).resolve())
    have: dict[str, int] = read_pack_meta(root).get("origin_items", {})
    folders = [s for s in sources if s.kind == "auto"]
    if have and not any(s.root in have for s in folders):
        return [SourceConfig(root=root, kind="pack")]  # a pack of other data: it replaces the config's
    if not have:
        if len({s.weight for s in folders}) > 1:
            warnings.warn(
                f"{pack} does not record its folders: the config's per-folder weights "
                f"{ {s.root: s.weight for s in folders} } do not apply, every packed image is drawn alike "
                "(re-pack with `segany train CONFIG --pack PATH` to keep them)",
                stacklevel=2,
            )
        return [SourceConfig(root=root, kind="pack")]
    missing = [s.root for s in folders if s.root not in have]
    if missing:
        raise ValueError(f"{pack} holds the folders {sorted(have)}, not the configured {missing}")
    unused = sorted(set(have) - {s.root for s in folders})
    if unused:
        warnings.warn(
            f"{pack}: folders {unused} are not in the config's data sources and are left out", stacklevel=2
        )
    return [SourceConfig(root=root, kind="pack", weight=s.weight, origin=s.root) for s in folders]


def _check_not_evaluation(path: Path) -> None:
    bad = [p for p in path.resolve().parts if p.lower() in EVAL_ONLY_FOLDERS]
    if bad:
        raise ValueError(f"{path}: {bad[0]} is evaluation-only data and must not be used for training")


def open_sources(sources: Sequence[SourceConfig], data_root: str | Path) -> list[SampleSource]:
    """The readers of the configured sources (BSDS readers leave out the benchmark-overlap ids)."""
    if not sources:
        raise ValueError("no data sources configured (data.sources)")
    from segany.train.cache import PackedSamples

    out: list[SampleSource] = []
    packs: dict[Path, PackedSamples] = {}  # one read of a pack, whatever the number of its folders used
    for src in sources:
        root = Path(src.root) if Path(src.root).is_absolute() else Path(data_root) / src.root
        _check_not_evaluation(root)
        if src.kind == "pack":
            key = root.resolve()
            if key not in packs:
                packs[key] = PackedSamples(root)
            pack = packs[key]
            out.append(pack.of_origin(src.origin) if src.origin else pack)
        else:
            out.append(open_folder(root, for_training=True))
    return out


def mixed_stream(
    sources: Sequence[SampleSource],
    weights: Sequence[float],
    length: int,
    augment_cfg: object,
    max_mask_fraction: float,
    seed: int,
) -> MixedDataset:
    from segany.train.cache import PackedSamples

    sizes = [s.sampling_size if isinstance(s, PackedSamples) else len(s) for s in sources]
    return MixedDataset(
        sources,
        weights=[w * n for w, n in zip(weights, sizes, strict=True)],
        length=length,
        augment_cfg=augment_cfg,  # type: ignore[arg-type]
        max_mask_fraction=max_mask_fraction,
        seed=seed,
    )


@dataclass
class Item:
    """One training image: ``image`` uint8 ``[3, S, S]`` (padded with SAM's mean colour), ``masks`` bool
    ``[M, S, S]`` (``1 <= M <= masks_per_image``), ``source`` for logs."""

    image: torch.Tensor
    masks: torch.Tensor
    source: str
    # bool [E, S/f, S/f] at the loss resolution (f = loss_stride): the image's other usable masks that overlap a
    # picked one (a garment and its person, a coarse and a fine annotator's region). A click inside one of them
    # has that mask as a second right answer (SAM's ambiguity); None when the image has none.
    others: torch.Tensor | None = None

    def pin_memory(self) -> Item:
        """Called by the DataLoader (``pin_memory=True``) so that host-to-GPU copies can be asynchronous."""
        others = None if self.others is None else self.others.pin_memory()
        return Item(self.image.pin_memory(), self.masks.pin_memory(), self.source, others)


def loss_frame(masks: np.ndarray, f: int) -> np.ndarray:
    """Bool masks ``[M, H, W]`` at the loss resolution: area-downsampled by ``f`` (> 0.5), as the simulation's
    ``gt_low``; a ragged border (H or W not a multiple of ``f``) is cropped."""
    m, h, w = len(masks), masks.shape[1] // f, masks.shape[2] // f
    return masks[:, : h * f, : w * f].reshape(m, h, f, w, f).mean(axis=(2, 4)) > 0.5


def worker_init(worker_id: int) -> None:
    """One thread per data-loader worker: many workers x many OpenCV/torch threads only fight over cores.

    Workers ignore SIGTERM/SIGINT: a signal sent to the whole process group (Ctrl-C, ``pkill -f``, a batch
    scheduler's pre-emption) must reach the trainer's stop-and-save handler, not kill a worker first, which made
    the loader raise and the run die without its final save.
    """
    import signal

    import cv2

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def collate_items(items: list[Item]) -> list[Item]:
    """Images keep their own number of masks, so a batch stays a list."""
    return items


class TrainItems(torch.utils.data.Dataset):
    """``[position] -> Item``: the stream's augmented sample, its usable masks, up to ``masks_per_image``."""

    def __init__(
        self,
        stream: MixedDataset,
        masks_per_image: int,
        min_mask_pixels: int = 16,
        loss_stride: int = 1,
        area_power: float = 0.0,
        max_others: int = 0,
    ) -> None:
        self.stream = stream
        self.max_others = max_others
        self.area_power = area_power
        self.masks_per_image = masks_per_image
        self.min_mask_pixels = min_mask_pixels
        self.loss_stride = loss_stride

    def _usable(self, masks: np.ndarray) -> np.ndarray:
        """Masks with enough pixels that still exist at the loss resolution (area-downsampled by
        ``loss_stride``, > 0.5): a mask that vanishes there would be scored as an empty target."""
        keep = masks.reshape(len(masks), -1).sum(1) >= self.min_mask_pixels
        f = self.loss_stride
        if f > 1 and keep.any():
            _, h, w = masks.shape
            if h % f == 0 and w % f == 0:
                low = loss_frame(masks[keep], f)
                keep[np.flatnonzero(keep)] = low.reshape(len(low), -1).any(1)
        return keep

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, index: int) -> Item:
        n = len(self.stream)
        for k in range(20):  # a crop can leave no usable mask: take another position, deterministically
            out = self.stream[(index + k * 7919) % n]
            if len(out.masks):
                out = out.select(self._usable(out.masks))
            if len(out.masks):
                break
        else:
            raise RuntimeError("20 items in a row had no usable mask; check the data and the augmentation")
        rng = np.random.default_rng([self.stream.seed, index, 1])
        m = len(out.masks)
        p = None
        if self.area_power and m > 1:
            w = out.masks.reshape(m, -1).sum(1).astype(np.float64) ** self.area_power
            p = w / w.sum()
        pick = np.sort(rng.choice(m, size=min(m, self.masks_per_image), replace=False, p=p))
        return Item(
            image=torch.from_numpy(np.ascontiguousarray(out.image.transpose(2, 0, 1))),
            masks=torch.from_numpy(np.ascontiguousarray(out.masks[pick])),
            source=out.source,
            others=self._others(out.masks, pick) if self.max_others > 0 else None,
        )

    def _others(self, masks: np.ndarray, pick: np.ndarray) -> torch.Tensor | None:
        """The unpicked masks overlapping a picked one, area-downsampled to the loss frame (> 0.5), at most
        ``max_others`` (the largest overlaps first)."""
        rest = np.setdiff1d(np.arange(len(masks)), pick)
        if not len(rest):
            return None
        flat = masks.reshape(len(masks), -1)
        overlap = (flat[rest].astype(np.float32) @ flat[pick].T.astype(np.float32)).max(1)
        rest = rest[overlap > 0]
        if not len(rest):
            return None
        rest = rest[np.argsort(-overlap[overlap > 0], kind="stable")[: self.max_others]]
        low = loss_frame(masks[rest], self.loss_stride)
        low = low[low.reshape(len(low), -1).any(1)]
        return torch.from_numpy(np.ascontiguousarray(low)) if len(low) else None


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """Stream positions of steps ``start .. total - 1``: step ``s`` is ``[s*B, ..., s*B + B - 1]``."""

    def __init__(self, batch_size: int, start: int, total: int) -> None:
        super().__init__()
        self.b, self.start, self.total = batch_size, start, total

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            yield list(range(step * self.b, (step + 1) * self.b))

    def __len__(self) -> int:
        return max(self.total - self.start, 0)
