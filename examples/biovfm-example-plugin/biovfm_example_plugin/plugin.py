"""Entry-point module: only the hookimpl, no torch import, so `biovfm plugins` stays fast."""

from biovfm_core import hookimpl


@hookimpl
def biovfm_register_objectives(register):
    register(
        "barlow_twins",
        "biovfm_example_plugin.objective:BarlowTwins",
        description="Barlow Twins redundancy reduction on CLS embeddings",
        # What `biovfm train` (and the conformance kit) use on a machine without a GPU.
        presets={"cpu": {"projection_dim": 256, "global_size": 64}},
    )
