"""HTML building blocks of the report pages: one self-contained file, inline CSS, images as data: URIs.

No script, font or stylesheet from the network, no JavaScript: a page opens from `file://` offline and reads
the same in any browser. Written by hand (a few f-strings over `html.escape`) rather than with a template
engine: the pages are a handful of tables, figures and headings, and this keeps the project's dependencies as
they are. Figures are matplotlib figures encoded to PNG in memory; photo thumbnails are JPEG (about 10x smaller
than PNG for photos, which keeps a 1,000-image validation set's page far under 15 MB).
"""

import base64
import html
import io
from collections.abc import Iterable, Sequence

import numpy as np

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2430;
background:#f4f6f9}
main{max-width:1360px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:0 0 10px;border-bottom:2px solid #d8dee8;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border:1px solid #dde3ec;border-radius:8px;padding:14px 18px;margin:16px 0}
.sub{color:#5a6577;margin:0 0 8px}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.kpi{background:#fff;border:1px solid #dde3ec;border-radius:8px;padding:8px 14px;min-width:120px}
.kpi b{display:block;font-size:22px}.kpi span{color:#5a6577;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{padding:3px 8px;border-bottom:1px solid #e6eaf0;text-align:left;vertical-align:top}
th{background:#eef2f7;position:sticky;top:0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{position:relative;min-width:150px}
.bar i{position:absolute;left:0;top:3px;bottom:3px;background:#9cc3ec;border-radius:2px}
.bar.bad i{background:#f0a39a}.bar span{position:relative}
.pos{color:#18794e}.neg{color:#c0392b}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px}
img.fig{max-width:100%;height:auto}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:10px}
.card{border:1px solid #dde3ec;border-radius:6px;padding:6px;background:#fafbfd}
.card img{width:100%;height:auto;display:block}.card p{margin:4px 0 0;font-size:12px;word-break:break-all}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:6px 0 10px;font-size:12px}
.legend span{display:inline-flex;align-items:center;gap:5px}
.legend i{display:inline-block;width:14px;height:14px;border:1px solid #666;border-radius:2px}
.note{color:#8a4b00;background:#fff6e5;border:1px solid #f3d9a4;border-radius:6px;padding:6px 10px}
code{background:#eef2f7;padding:0 4px;border-radius:3px;font-size:12px}
nav a{margin-right:14px}
"""


def esc(value) -> str:
    return html.escape(str(value))


def document(title: str, body: Iterable[str]) -> str:
    """A whole page: UTF-8, inline CSS, no external resource (a CSP that forbids any fetch says so)."""
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><main>\n{''.join(body)}\n</main></body></html>\n"
    )


def section(title: str, *parts: str, anchor: str = "", sub: str = "") -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    note = f'<p class="sub">{sub}</p>' if sub else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{note}{''.join(parts)}</section>\n"


def kpis(pairs: Sequence[tuple[str, str]]) -> str:
    """Big numbers with their labels (the first thing a reader looks for)."""
    cells = "".join(f'<div class="kpi"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in pairs)
    return f'<div class="kpis">{cells}</div>'


def table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[bool] = ()) -> str:
    """A table; cells are escaped unless they are `Raw` (already HTML, e.g. a bar)."""
    numeric = list(numeric) + [False] * (len(headers) - len(numeric))
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' * n}>{_cell(c)}</td>" for c, n in zip(row, numeric)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Raw(str):
    """A table cell that is HTML already."""


def _cell(value) -> str:
    return value if isinstance(value, Raw) else esc(value)


def bar(value: float | None, text: str, scale: float = 1.0, bad: bool = False) -> Raw:
    """A number drawn over a CSS bar of `value / scale` of the cell's width (no image, no script)."""
    if value is None or not np.isfinite(value):
        return Raw('<div class="bar">–</div>')
    width = 100 * max(0.0, min(1.0, value / scale)) if scale > 0 else 0
    return Raw(f'<div class="bar{" bad" * bad}"><i style="width:{width:.1f}%"></i><span>{esc(text)}</span></div>')


def delta(value: float | None, digits: int = 4) -> Raw:
    if value is None or not np.isfinite(value):
        return Raw("–")
    kind = "pos" if value > 0 else "neg" if value < 0 else ""
    return Raw(f'<span class="{kind}">{value:+.{digits}f}</span>')


def legend(names: Sequence[str], colours: np.ndarray, ids: Sequence[int]) -> str:
    """Colour swatches of the classes `ids` (one legend for every thumbnail beside it)."""
    spans = "".join(
        f'<span><i style="background:rgb({",".join(str(int(c)) for c in colours[i])})"></i>{esc(names[i])}</span>'
        for i in ids
    )
    return f'<div class="legend">{spans}</div>'


def figure_uri(fig, dpi: int = 100) -> str:
    """A matplotlib figure as a PNG data: URI (closed afterwards)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    _close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def jpeg_uri(rgb: np.ndarray, quality: int = 80) -> str:
    """An RGB uint8 array as a JPEG data: URI."""
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


def img(uri: str, alt: str, css: str = "fig") -> str:
    return f'<img class="{css}" src="{uri}" alt="{esc(alt)}">'


def link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.{digits}f}" if np.isfinite(value) else "–"
