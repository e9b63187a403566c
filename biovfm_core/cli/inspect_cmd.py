"""``biovfm inspect``: pictures of what models learned, side by side on the same images."""

from __future__ import annotations

import click

from biovfm_core.errors import ConfigError


@click.command("inspect")
@click.argument("models", nargs=-1)
@click.option(
    "--data", "data", multiple=True, metavar="SOURCE",
    help="Images to show: a catalog or kind:path, as for train (default: the demo data).",
)  # fmt: skip
@click.option("--images", "count", type=int, default=12, show_default=True, help="Images shown.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which images are picked.")
@click.option(
    "--image-size", type=int, default=None,
    help="Model input side (default: the first model's own).",
)  # fmt: skip
@click.option("--tile", type=int, default=96, show_default=True, help="Pixels per picture tile.")
@click.option("--neighbours", "k", type=int, default=5, show_default=True)
@click.option(
    "--features", type=click.Choice(["mean", "cls"]), default="mean", show_default=True,
    help="Retrieval features: mean of patch tokens (as eval) or the CLS token.",
)  # fmt: skip
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--opt", "opts", multiple=True, metavar="backbone.KEY=VALUE",
    help="Backbone option for random:/timm: models, e.g. backbone.image_size=64.",
)  # fmt: skip
@click.option(
    "--output", "-o", type=click.Path(file_okay=False), default="inspect", show_default=True,
    help="Folder for the PNG grids, inspect.json and index.html.",
)  # fmt: skip
def inspect(models, data, count, seed, image_size, tile, k, features, device, opts, output) -> None:
    """Draw what MODELS (run folders, exports, random:<backbone>, timm:<name>) learned:
    DINOv2's PCA of patch features as RGB, the last block's CLS attention per head
    and nearest-neighbour grids, on the same images for every model; open
    OUTPUT/index.html to compare them.

    \b
    biovfm inspect runs/dinov2 random:vit_small -o inspect
    biovfm inspect runs/mae --data catalog.yaml --images 16 --features cls
    """
    if not models:
        raise ConfigError("give at least one model: a run folder, an export, random:<b>, timm:<n>")
    if count < 2:
        raise ConfigError(f"--images must be at least 2, not {count}")
    if tile < 8:
        raise ConfigError(f"--tile must be at least 8 pixels, not {tile}")
    if k < 1:
        raise ConfigError(f"--neighbours must be at least 1, not {k}")
    from biovfm_core.cli.eval_cmd import _backbone_options
    from biovfm_core.inspect.runner import InspectSettings, run_inspect

    settings = InspectSettings(
        count=count,
        seed=seed,
        image_size=image_size,
        tile=tile,
        k=k,
        features=features,
        device=device,
        backbone_options=_backbone_options(opts),
    )
    run_inspect(list(models), list(data), output, settings, log=click.echo)
    click.echo(f"open {output}/index.html")
