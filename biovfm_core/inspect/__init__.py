"""``biovfm inspect``: pictures of what a model learned (PCA of patch features, CLS
attention per head, nearest-neighbour retrieval) on a fixed set of images."""
