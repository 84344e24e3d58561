"""Cutting specimens from full resolution: margin, clipping, pad to square, storage."""

from labpipe.crops.padding import border_mean_colour, margin_box, pad_to_square
from labpipe.crops.store import CropWriter, crop_relpath, encode_png, image_crop_dir, read_crop, save_crop

__all__ = [
    "CropWriter",
    "border_mean_colour",
    "crop_relpath",
    "encode_png",
    "image_crop_dir",
    "margin_box",
    "pad_to_square",
    "read_crop",
    "save_crop",
]
