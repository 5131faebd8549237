"""SAM as pure nn.Modules, one concept per file (no I/O, no numpy)."""

from segany.modeling.conv_encoder import ConvImageEncoder
from segany.modeling.image_encoder import ImageEncoderViT
from segany.modeling.mask_decoder import MaskDecoder
from segany.modeling.prompt_encoder import PromptEncoder
from segany.modeling.sam import Sam
from segany.modeling.tiny_vit import TinyViT
from segany.modeling.transformer import TwoWayTransformer

__all__ = [
    "ConvImageEncoder",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TwoWayTransformer",
]
