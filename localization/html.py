"""index.html: one self-contained page to browse the photos, their matches and the map, with no internet.

Pictures are embedded as base64 data URIs, the map is inline SVG (UTM metres, north up) and the little
interaction (confidence filter, click a point or a card to find the other) is inline JavaScript. Nothing is
fetched: the page opens from disk, offline, in any browser.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

MAX_MAP_POINTS = 5000  # database points drawn (every k-th beyond that)
MAP_SIDE = 1000  # SVG user units of the longer side of the map
EMBED_WIDTH, EMBED_QUALITY = 720, 80  # prediction pictures in the page: at most this wide (px), JPEG quality

STYLE = """
body{font-family:sans-serif;margin:0;background:#f4f4f4;color:#222}
header{padding:10px 16px;background:#283f5a;color:#fff} header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;font-size:13px}
main{display:flex;gap:12px;padding:12px;align-items:flex-start}
#mapbox{position:sticky;top:8px;flex:0 0 42%;background:#fff;border:1px solid #ccc;padding:6px}
#cards{flex:1;min-width:0}
svg{width:100%;height:auto;max-height:85vh;background:#fbfbf7}
.db{fill:#b8b8b8} .truth{stroke:#000;stroke-width:1.5} .link{stroke:#666;stroke-width:1}
.pred{stroke:#000;stroke-width:1;cursor:pointer} .pred.sel{stroke:#e00;stroke-width:4}
.card{background:#fff;border:1px solid #ccc;margin:0 0 10px;padding:8px} .card.sel{outline:3px solid #e00}
.card h2{font-size:14px;margin:0 0 4px;word-break:break-all} .card img{max-width:100%;display:block}
.card table{font-size:12px;border-collapse:collapse;margin-top:4px}
.card td,.card th{padding:1px 6px;border-bottom:1px solid #eee;text-align:left}
.conf{font-weight:bold;padding:0 4px;border-radius:3px;color:#fff}
.err{background:#fee;border:1px solid #d99;padding:4px 8px;margin:0 0 4px;font-size:13px}
.hidden{display:none} label{font-size:13px}
"""

SCRIPT = """
function sel(q){document.querySelectorAll('.sel').forEach(e=>e.classList.remove('sel'));
 var c=document.getElementById('c'+q),p=document.getElementById('p'+q);
 if(c){c.classList.add('sel');c.scrollIntoView({behavior:'smooth',block:'center'});} if(p){p.classList.add('sel');}}
function filt(v){document.getElementById('thr').textContent=Number(v).toFixed(2);
 document.querySelectorAll('[data-conf]').forEach(e=>e.classList.toggle('hidden',Number(e.dataset.conf)<v));}
"""


def confidence_colour(c: float) -> str:
    """HSL colour from red (confidence 0) through yellow to green (1)."""
    return f"hsl({120 * min(max(c, 0.0), 1.0):.0f},75%,40%)"


def data_uri(path: Path, max_width: int = EMBED_WIDTH) -> str:
    """An image file as a JPEG data: URI, scaled down to at most max_width pixels wide (keeps the page small)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.width > max_width:
            img = img.resize((max_width, max(1, round(img.height * max_width / img.width))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=EMBED_QUALITY)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _frame(points: np.ndarray) -> tuple[float, float, float, float, float]:
    """(east0, north1, width, height, scale) mapping UTM metres to SVG units: x = (E-east0)·s, y = (north1-N)·s."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = 0.05 * max(float((hi - lo).max()), 1.0)
    lo, hi = lo - pad, hi + pad
    scale = MAP_SIDE / float((hi - lo).max())
    return float(lo[0]), float(hi[1]), float(hi[0] - lo[0]) * scale, float(hi[1] - lo[1]) * scale, scale


def svg_map(db_utm: np.ndarray, recs: Sequence[dict]) -> str:
    """Inline SVG: database points, predicted points (coloured by confidence, clickable), true positions."""
    ok = [r for r in recs if r["status"] == "ok"]
    pred = np.array([[r["easting"], r["northing"]] for r in ok], dtype=np.float64).reshape(-1, 2)
    truth = np.array([[r["true_easting"], r["true_northing"]] for r in ok if "true_easting" in r]).reshape(-1, 2)
    shown = db_utm[::max(1, -(-len(db_utm) // MAX_MAP_POINTS))]
    e0, n1, w, h, s = _frame(np.concatenate([shown, pred, truth]))
    xy = lambda p: ((p[:, 0] - e0) * s, (n1 - p[:, 1]) * s)  # noqa: E731  UTM N×2 -> SVG x, y
    parts = [f'<svg viewBox="0 0 {w:.0f} {h:.0f}" role="img" aria-label="map of the database and predictions">']
    parts += [f'<circle class="db" cx="{x:.1f}" cy="{y:.1f}" r="2"/>' for x, y in zip(*xy(shown))]
    if len(truth):
        px, py = xy(pred[[("true_easting" in r) for r in ok]])
        tx, ty = xy(truth)
        parts += [f'<line class="link" x1="{a:.1f}" y1="{b:.1f}" x2="{c:.1f}" y2="{d:.1f}"/>'
                  for a, b, c, d in zip(tx, ty, px, py)]
        parts += [f'<path class="truth" d="M{a - 4:.1f} {b - 4:.1f}l8 8m0 -8l-8 8"/>' for a, b in zip(tx, ty)]
    for q, (x, y, r) in enumerate(zip(*xy(pred), ok)):
        parts.append(f'<circle id="p{q}" class="pred" data-conf="{r["confidence"]}" cx="{x:.1f}" cy="{y:.1f}" r="7" '
                     f'fill="{confidence_colour(r["confidence"])}" onclick="sel({q})">'
                     f'<title>{html.escape(Path(r["photo"]).name)}: confidence {r["confidence"]:.2f}</title></circle>')
    scale_m = 10 ** np.floor(np.log10(MAP_SIDE / s / 4))  # a round length of ≤ a quarter of the map
    parts.append(f'<path d="M10 {h - 10:.0f}h{scale_m * s:.1f}" stroke="#000" stroke-width="3"/>'
                 f'<text x="10" y="{h - 16:.0f}" font-size="14">{scale_m:g} m</text></svg>')
    return "\n".join(parts)


def _position_text(r: dict) -> str:
    """'E …, N … (zone), lat …, lon …' of a record."""
    zone = f" ({r['utm_zone']})" if r["utm_zone"] else ""
    geo = f", lat {r['latitude']:.6f}, lon {r['longitude']:.6f}" if r["latitude"] is not None else ""
    return f"E {r['easting']:.1f}, N {r['northing']:.1f}{zone}{geo}"


def card(q: int, r: dict, picture: Path | None) -> str:
    """One photo: its prediction picture, predicted position, confidence and the table of matches."""
    rows = "".join(f"<tr><td>#{m['rank']}</td><td>{html.escape(m['file'])}</td><td>{m['easting']:.1f}</td>"
                   f"<td>{m['northing']:.1f}</td><td>{m['descriptor_distance']:.4f}</td></tr>" for m in r["matches"])
    truth = f"<p>true position error: {r['error_m']:.1f} m</p>" if "error_m" in r else ""
    img = f'<img alt="matches of {html.escape(Path(r["photo"]).name)}" src="{data_uri(picture)}">' if picture else ""
    return (f'<div class="card" id="c{q}" data-conf="{r["confidence"]}" onclick="sel({q})">'
            f'<h2>{html.escape(r["photo"])}</h2><p>predicted: {_position_text(r)} &nbsp; confidence '
            f'<span class="conf" style="background:{confidence_colour(r["confidence"])}">{r["confidence"]:.2f}'
            f'</span></p>{truth}{img}<table><tr><th>rank</th><th>database image</th><th>easting</th>'
            f'<th>northing</th><th>descriptor distance</th></tr>{rows}</table></div>')


def write_html(path: Path, recs: Sequence[dict], db_utm: np.ndarray, pictures: Sequence[Path], title: str,
               max_photos: int) -> Path:
    """Write the page: summary, map, confidence filter, errors and the first max_photos photos."""
    ok = [r for r in recs if r["status"] == "ok"]
    errors = "".join(f'<div class="err">{html.escape(r["photo"])}: {html.escape(r["message"])}</div>'
                     for r in recs if r["status"] == "error")
    cards = "\n".join(card(q, r, pictures[q] if q < len(pictures) else None) for q, r in enumerate(ok[:max_photos]))
    more = (f"<p>the first {max_photos} of {len(ok)} photos are shown; all are in predictions.csv</p>"
            if len(ok) > max_photos else "")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1>"
            f"<p>{len(ok)} photos localized, {len(recs) - len(ok)} errors; {len(db_utm)} database images</p></header>"
            f"<main><div id=\"mapbox\">{svg_map(db_utm, recs) if ok else ''}<label>minimum confidence "
            f"<input type=\"range\" min=\"0\" max=\"1\" step=\"0.05\" value=\"0\" oninput=\"filt(this.value)\"> "
            f"<span id=\"thr\">0.00</span></label></div><div id=\"cards\">{errors}{more}{cards}</div></main>"
            f"<script>{SCRIPT}</script></body></html>")
    path.write_text(page, encoding="utf-8")
    return path
