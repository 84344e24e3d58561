"""labpipe: find, crop, classify and count insect specimens on stitched Petri-dish images."""

__version__ = "0.1.0"
