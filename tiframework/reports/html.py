"""Self-contained HTML pages: jinja2 templates shipped with the package, plotly figures with
plotly.js inlined once, images as data URIs. A page opens offline, from a file, anywhere.
"""

from __future__ import annotations

import base64
import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import plotly.io as pio
import plotly.offline
from PIL import Image
from plotly.colors import hex_to_rgb, qualitative

PALETTE = qualitative.Plotly
PLOT_HEIGHT = 420
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("tiframework.reports", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@dataclass(frozen=True)
class Plot:
    """One figure of a page: its anchor, title, and the div + script that draws it."""

    id: str
    title: str
    html: str  # trusted: plotly's own output; the template marks it `safe`
    caption: str = ""
    figure: Any = None  # the plotly figure itself (W&B logs it too)


def plot(fig: Any, plot_id: str, title: str, caption: str = "") -> Plot:
    fig.update_layout(template="plotly_white", height=PLOT_HEIGHT, margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      title={"text": title})
    div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=plot_id,
                      default_height=f"{PLOT_HEIGHT}px", config={"displaylogo": False, "responsive": True})
    return Plot(plot_id, title, div, caption, fig)


def color(i: int, alpha: float | None = None) -> str:
    """The i-th palette colour, as given or as `rgba(...)` with `alpha` (interval bands)."""
    hex_color = PALETTE[i % len(PALETTE)]
    if alpha is None:
        return hex_color
    r, g, b = hex_to_rgb(hex_color)
    return f"rgba({r},{g},{b},{alpha})"


def jpeg_data_uri(path: Path, quality: int = 85) -> str:
    """An image file re-encoded as JPEG: for the many small photos of an image grid, where
    PNG's lossless rows (~200 kB for 32 images) would make a report of 32 runs tens of MB."""
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def slug(*parts: str) -> str:
    text = "-".join(parts)
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def unique_ids(plots: list[Plot]) -> None:
    seen = [p.id for p in plots]
    dupes = {i for i in seen if seen.count(i) > 1}
    if dupes:
        raise ValueError(f"plot ids repeat: {sorted(dupes)}")


def render(template: str, **context: Any) -> str:
    """A page from `templates/<template>`, with plotly.js inlined for its plots."""
    plots = list(itertools.chain.from_iterable(v for k, v in context.items() if k.endswith("plots")))
    unique_ids(plots)
    return _ENV.get_template(template).render(plotly_js=plotly.offline.get_plotlyjs(),
                                              plot_count=len(plots), **context)
