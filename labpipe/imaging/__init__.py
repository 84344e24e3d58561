"""Reading plate images: lazy, region-based, never more than one full-resolution copy."""

from labpipe.imaging.reader import PlateImage, open_image, verify_readable

__all__ = ["PlateImage", "open_image", "verify_readable"]
