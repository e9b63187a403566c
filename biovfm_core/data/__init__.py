"""Data pipeline: catalog, index, subsets, decoding, views, loader."""

# The one default for the image-size guard: the folder, DICOM and NIfTI readers'
# ``max_pixels`` and the run config's ``data.max_image_pixels``. A 2D medical image is
# at most a few tens of megapixels (a mammogram is ~30 MP); anything far above is a
# decompression bomb or a whole-slide image that needs a tiling reader, and decoding
# it would exhaust a worker's memory.
DEFAULT_MAX_PIXELS = 200_000_000
