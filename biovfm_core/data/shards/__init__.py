"""Packed shards: many images decoded once into a litdata dataset, streamed to training.

``format`` defines what a shard folder holds and how an image is stored in it; the
packer (``pack``, which runs ``plan``, ``folder_state``, ``part_writer`` and
``finish``), the training-side reader (``reader``) and the epoch order that keeps
each rank on its own run of chunks (``order``) build on it.
"""
