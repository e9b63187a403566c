"""``index.html``: each picture of every model side by side on the same images."""

from __future__ import annotations

import html
from pathlib import Path

SECTIONS = {
    "pca": (
        "PCA of patch features",
        "Top row: the images; bottom row: DINOv2's picture. First principal component of the "
        "patch features of each modality's images thresholded (foreground; black is "
        "background), then three components of a PCA on all foreground patches shown as RGB.",
    ),
    "attention": (
        "CLS attention of the last block",
        "One row per image: the image, the CLS token's attention over patches for each head "
        "(each map sums to 1, scaled to its own range), and the mean over heads.",
    ),
    "retrieval": (
        "Nearest neighbours",
        "One row per image: the query, then its most similar other images by cosine similarity "
        "of {features} features, most similar first.",
    ),
}


def write_page(path: Path, shown, results, settings, size: int) -> Path:
    from biovfm_core.files import write_atomic

    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>biovfm inspect</title>",
        "<style>body{font-family:sans-serif;margin:1em}.row{display:flex;gap:1.5em;"
        "align-items:flex-start;overflow-x:auto}figure{margin:0}img{image-rendering:pixelated;"
        "max-width:none}td,th{padding:2px 8px;text-align:left}</style></head><body>",
        "<h1>biovfm inspect</h1>",
        f"<p>{len(shown.uris)} images at {size} px (seed {settings.seed}), the same for every "
        "model.</p><table><tr><th>model</th><th>spec</th><th>patches</th><th>heads</th>"
        "<th>CT body IoU (PCA on CT slices)</th><th>CT body IoU (shown map)</th></tr>",
    ]

    def num(v):
        return "–" if v is None else f"{v:.3f}"

    for r in results:
        parts.append(
            f"<tr><td>{e(r.name)}</td><td>{e(r.spec)}</td><td>{r.grid[0]}×{r.grid[1]}</td>"
            f"<td>{r.heads or '–'}</td><td>{num(r.body_iou)}</td><td>{num(r.body_iou_shown)}</td></tr>"
        )
    parts.append("</table>")
    for key, (title, text) in SECTIONS.items():
        parts.append(f"<h2>{e(title)}</h2><p>{e(text.format(features=settings.features))}</p>")
        parts.append("<div class='row'>")
        for r in results:
            if key in r.pictures:
                body = f"<img src='{e(r.pictures[key])}' alt='{e(title)}: {e(r.name)}'>"
            else:
                body = "<p>not available: the model has no class token or timm attention</p>"
            parts.append(f"<figure><figcaption><b>{e(r.name)}</b></figcaption>{body}</figure>")
        parts.append("</div>")
    parts.append("<h2>Images</h2><ol>")
    parts.extend(
        f"<li>{e(m)}: {e(u)}</li>" for u, m in zip(shown.uris, shown.modalities, strict=True)
    )
    parts.append("</ol></body></html>\n")
    return write_atomic(path, "\n".join(parts).encode())
