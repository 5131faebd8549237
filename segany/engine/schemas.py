"""Request and response bodies of the annotation API (validated by pydantic; also the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

MAX_PROMPTS = 200
MAX_RLE_RUNS = 4_000_000


def _printable(value: str) -> str:
    # NUL and other control characters are refused: PostgreSQL cannot store NUL, and they have no place in a label.
    if any(not ch.isprintable() for ch in value):
        raise ValueError("control characters are not allowed")
    return value


class ErrorOut(BaseModel):
    detail: str | list | dict
    current_version: int | None = None


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    bearer: bool = Field(False, description="return a bearer token for scripts instead of setting a cookie")


class LoginOut(BaseModel):
    username: str
    is_admin: bool
    csrf_token: str | None = None
    token: str | None = None


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=12, max_length=256)
    is_admin: bool = False


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    _check = field_validator("name")(_printable)


class MemberIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)


class ProjectOut(BaseModel):
    id: int
    name: str


class ImageOut(BaseModel):
    id: int
    project_id: int
    file_name: str
    width: int
    height: int
    done: bool
    n_annotations: int


class ImageStatusIn(BaseModel):
    done: bool


class PromptPoint(BaseModel):
    x: float = Field(allow_inf_nan=False)
    y: float = Field(allow_inf_nan=False)
    label: Literal[0, 1, 2, 3]


class RleIn(BaseModel):
    """Uncompressed COCO RLE: run lengths over the mask in column-major order, starting with background."""

    size: tuple[int, int] = Field(description="[height, width] of the image")
    counts: list[int] = Field(max_length=MAX_RLE_RUNS)

    @field_validator("counts")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(c < 0 for c in v):
            raise ValueError("run lengths must be non-negative")
        return v


class AnnotationIn(BaseModel):
    rle: RleIn
    label: str = Field("", max_length=200)
    source: Literal["person", "model"] = "person"
    seconds: float = Field(0.0, ge=0.0, le=86_400.0, allow_inf_nan=False)
    quality: int | None = Field(None, ge=1, le=10)
    predicted_iou: float | None = Field(None, ge=-1.0, le=2.0, allow_inf_nan=False)
    prompts: list[PromptPoint] = Field(default_factory=list, max_length=MAX_PROMPTS)
    idempotency_key: str | None = Field(None, min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    _check = field_validator("label")(_printable)


class AnnotationUpdate(BaseModel):
    """Only the fields present are changed; ``version`` must be the version the client last read."""

    version: int = Field(ge=1, le=2**31 - 1)
    label: str | None = Field(None, max_length=200)
    quality: int | None = Field(None, ge=1, le=10)
    rle: RleIn | None = None
    seconds: float | None = Field(None, ge=0.0, le=86_400.0, allow_inf_nan=False)
    deleted: bool | None = None
    _check = field_validator("label")(lambda v: v if v is None else _printable(v))


class AnnotationOut(BaseModel):
    id: int
    image_id: int
    version: int
    label: str
    rle: dict = Field(description="COCO compressed RLE {size: [h, w], counts: str}")
    area: int
    bbox: list[float]
    source: str
    created_by: str | None
    seconds: float
    quality: int | None
    predicted_iou: float | None
    prompts: list[PromptPoint]
    deleted: bool


class ModelInfo(BaseModel):
    model_key: str
    image_size: int
    embedding_shape: list[int]
    quantized_decoder: bool
    decoder_url: str | None = Field(
        description="the browser decoder; None when clicks are decoded on the server"
    )
    decoder_optimized: bool = Field(
        default=False,
        description="the browser decoder's graphs were saved by onnxruntime's optimiser: create their sessions "
        "with graph optimisation off",
    )
    decode: Literal["browser", "server"] = Field(
        description="where clicks are decoded: in the page (SAM, MobileSAM) or by POST /api/images/{id}/decode "
        "(HQ-SAM, SAM 2)"
    )
    resize_mode: Literal["longest_side", "square"] = Field(
        description="the model's geometry: SAM's resize-longest-side and pad, or SAM 2's stretch to a square"
    )
    low_res_size: int = Field(description="side of the low-res logits (and of a mask input)")


class DecodePoint(BaseModel):
    x: float = Field(allow_inf_nan=False, description="image pixels")
    y: float = Field(allow_inf_nan=False, description="image pixels")
    label: Literal[0, 1] = Field(description="1 foreground, 0 background")


class DecodeIn(BaseModel):
    """One prompt in image pixels, answered by `SamPredictor.predict` on the image's cached features."""

    points: list[DecodePoint] = Field(default_factory=list, max_length=MAX_PROMPTS)
    box: tuple[float, float, float, float] | None = Field(
        None, description="x0, y0, x1, y1 in image pixels (x1 >= x0, y1 >= y0)"
    )
    mask_input: str | None = Field(
        None,
        max_length=4 * 1024 * 1024,
        description="a previous decode's low-res logits of one mask: base64 of little-endian float32, "
        "low_res_size x low_res_size, row-major",
    )
    multimask_output: bool = Field(True, description="3 masks (1 for HQ-SAM) for an ambiguous prompt, else 1")


class DecodeOut(BaseModel):
    scores: list[float] = Field(description="predicted IoU of each mask")
    shape: list[int] = Field(description="[C, s, s] of low_res_logits")
    low_res_logits: str = Field(
        description="base64 of little-endian float32 C x s x s: SamPredictor's low-res logits (threshold 0 after "
        "upsampling as the model's postprocess_masks)"
    )


class PrefillOut(BaseModel):
    created: int
    seconds: float
    annotations: list[AnnotationOut]


class PrefillProgress(BaseModel):
    """A running pre-fill: ``done`` of ``total`` grid points decoded (0 while the image is encoded)."""

    running: bool
    done: int
    total: int
