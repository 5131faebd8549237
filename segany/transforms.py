"""Resize-longest-side (SAM) and resize-to-square (SAM 2): the geometric transforms between an image's pixels and
the model's input frame.

`ResizeLongestSide.apply_image` reproduces the official numpy path exactly (PIL bilinear resize of the uint8
image, which is what torchvision's PIL backend calls), so embeddings match the reference bit for bit.
`apply_image_torch` is the batched tensor path (antialiased bilinear); it fixes segment-anything 1.0's bug of
reading the target size from the batch and channel dimensions (upstream issue #218).
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class ResizeLongestSide:
    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(H, W) after scaling so the long side equals `long_side_length` (rounded half up)."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return int(newh + 0.5), int(neww + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """H×W×C uint8 → resized uint8 (PIL bilinear)."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))

    def apply_coords(
        self, coords: np.ndarray, original_size: tuple[int, ...], normalized: bool = False
    ) -> np.ndarray:
        """(..., 2) (x, y) pixel coordinates of the original image → the resized frame (float64 copy).

        ``normalized``: the coordinates are fractions of the image's width and height, in [0, 1].
        """
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).astype(float)
        if normalized:
            old_h = old_w = 1
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(
        self, boxes: np.ndarray, original_size: tuple[int, ...], normalized: bool = False
    ) -> np.ndarray:
        """(B, 4) XYXY boxes → the resized frame."""
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size, normalized).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """B×C×H×W float → resized B×C×h×w (antialiased bilinear)."""
        h, w = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


class ResizeSquare:
    """SAM 2's geometric transform: the image is stretched to ``size``×``size`` whatever its aspect ratio.

    Same interface as `ResizeLongestSide`. `apply_image` reproduces SAM 2's tensor path exactly: the uint8 image
    scaled to [0, 1] in float32 (torchvision's ``ToTensor``), then resized with antialiased bilinear
    interpolation (torchvision's ``Resize`` on tensors); it returns H×W×3 float32 in [0, 1], which the model
    normalises. Coordinates are mapped in float32 as SAM 2 does (``x / W · size``), so prompts match it bit for
    bit. No padding: the whole input frame is image.
    """

    def __init__(self, size: int) -> None:
        self.target_length = size

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(H, W) of the model input: always square."""
        return long_side_length, long_side_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 → size×size×3 float32 in [0, 1]."""
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32).div(255)
        return self.apply_image_torch(t[None])[0].permute(1, 2, 0).numpy()

    def apply_coords(
        self, coords: np.ndarray, original_size: tuple[int, ...], normalized: bool = False
    ) -> np.ndarray:
        """(..., 2) (x, y) pixel coordinates of the original image → the model frame (float32).

        ``normalized``: the coordinates are fractions of the image's width and height, in [0, 1] (SAM 2's
        ``normalize_coords=False``).
        """
        out = np.array(coords, dtype=np.float32)
        if not normalized:
            h, w = original_size
            out[..., 0] = out[..., 0] / np.float32(w)
            out[..., 1] = out[..., 1] / np.float32(h)
        return out * np.float32(self.target_length)

    def apply_boxes(
        self, boxes: np.ndarray, original_size: tuple[int, ...], normalized: bool = False
    ) -> np.ndarray:
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size, normalized).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W float → B×3×size×size (antialiased bilinear, as torchvision's ``Resize``)."""
        s = self.target_length
        return F.interpolate(image, (s, s), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        h, w = original_size
        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] / w
        coords[..., 1] = coords[..., 1] / h
        return coords * self.target_length

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


def input_transform(resize_mode: str, size: int) -> ResizeLongestSide | ResizeSquare:
    """The transform of a model's ``resize_mode``: "longest_side" (SAM) or "square" (SAM 2)."""
    if resize_mode == "longest_side":
        return ResizeLongestSide(size)
    if resize_mode == "square":
        return ResizeSquare(size)
    raise ValueError(f"resize_mode must be 'longest_side' or 'square', got {resize_mode!r}")
