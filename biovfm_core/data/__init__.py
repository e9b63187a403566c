"""Data pipeline: catalog, index, subsets, decoding, views, loader."""
