"""Plots of a `qcompile debug` result: SQNR per layer in topological order.

`.html`: a self-contained page (inline SVG chart + the full table), no dependencies.
`.png`: drawn with Pillow. Quantized ops are drawn as filled dots, the others hollow; the five
largest SQNR drops (where error enters) are labelled with their node names.
"""
from __future__ import annotations

import dataclasses
import html
import math
from pathlib import Path

from ..errors import QuantizationError
from .debug import DebugResult

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 1100, 420, 60, 20, 30, 50


def _points(res: DebugResult):
    # tensors identical in both models (shape arithmetic, upstream of every quantizer) have an
    # infinite SQNR and are left out of the chart (they stay in the table)
    res = dataclasses.replace(res, rows=[r for r in res.rows if math.isfinite(r.sqnr_db)])
    vals = [r.sqnr_db for r in res.rows]
    if not vals:
        raise QuantizationError("nothing to plot: no tensors shared by the two models")
    lo, hi = min(vals + [0.0]), max(vals) + 5
    n = max(len(vals) - 1, 1)
    pts = [(PAD_L + i * (W - PAD_L - PAD_R) / n,
            PAD_T + (hi - v) * (H - PAD_T - PAD_B) / (hi - lo)) for i, v in enumerate(vals)]
    drops = sorted(((vals[i - 1] - vals[i], i) for i in range(1, len(vals))), reverse=True)[:5]
    return vals, lo, hi, pts, [i for d, i in drops if d > 1.0], res.rows


def _y(v, lo, hi):
    return PAD_T + (hi - v) * (H - PAD_T - PAD_B) / (hi - lo)


def write_plot(res: DebugResult, path: str | Path, title: str = "") -> Path:
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        path.write_text(_html(res, title))
    elif path.suffix.lower() == ".png":
        _png(res, path, title)
    else:
        raise QuantizationError(f"--plot {path}: use a .png or .html file name")
    return path


def _svg(res: DebugResult, title: str) -> str:
    vals, lo, hi, pts, marks, rows = _points(res)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{PAD_L}" y="18" font-size="14">{html.escape(title)} — SQNR (dB) per '
           f'layer vs fp32, {res.samples} samples</text>']
    step = 10 if hi - lo > 40 else 5
    v = math.ceil(lo / step) * step
    while v <= hi:
        y = _y(v, lo, hi)
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    out.append('<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="' +
               " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
    for (x, y), r in zip(pts, rows):
        fill = "#1f77b4" if r.quantized_inputs else "white"
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{fill}" stroke="#1f77b4">'
                   f'<title>{html.escape(r.node)} ({r.op_type}): {r.sqnr_db:.2f} dB</title>'
                   '</circle>')
    for i in marks:
        x, y = pts[i]
        out.append(f'<text x="{x + 4:.1f}" y="{y + 14:.1f}" fill="#d62728">'
                   f'{html.escape(rows[i].node[:30])}</text>')
    out.append(f'<text x="{W / 2:.0f}" y="{H - 12}" text-anchor="middle">layer (topological '
               'order); filled: op reads quantized inputs; red: largest SQNR drops</text>')
    out.append("</svg>")
    return "\n".join(out)


def _html(res: DebugResult, title: str) -> str:
    rows = "\n".join(
        f"<tr><td>{r.index}</td><td>{html.escape(r.node)}</td><td>{r.op_type}</td>"
        f"<td>{r.sqnr_db:.2f}</td><td>{r.cosine:.6f}</td><td>{r.max_abs_err:.4g}</td>"
        f"<td>{'yes' if r.quantized_inputs else ''}</td></tr>" for r in res.rows)
    qrows = "\n".join(f"<tr><td>{html.escape(q.tensor)}</td><td>{q.levels}</td>"
                      f"<td>{q.sqnr_db:.2f}</td></tr>" for q in res.quantizers)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>qcompile debug
{html.escape(title)}</title><style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;
text-align:right}} td:nth-child(2){{text-align:left}}</style></head><body>
<h2>qcompile debug {html.escape(title)}</h2>{_svg(res, title)}
<h3>Layers</h3><table><tr><th>#</th><th>node</th><th>op</th><th>SQNR dB</th><th>cosine</th>
<th>max abs err</th><th>quantized inputs</th></tr>{rows}</table>
<h3>Quantizers (own error: input vs output)</h3><table><tr><th>tensor</th><th>levels</th>
<th>SQNR dB</th></tr>{qrows}</table></body></html>"""


def _png(res: DebugResult, path: Path, title: str) -> None:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as err:
        raise QuantizationError("--plot .png needs Pillow (pip install pillow); or use .html") \
            from err
    vals, lo, hi, pts, marks, rows = _points(res)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:
        font = ImageFont.load_default()
    d.text((PAD_L, 8), f"{title} - SQNR (dB) per layer vs fp32, {res.samples} samples",
           fill="black", font=font)
    step = 10 if hi - lo > 40 else 5
    v = math.ceil(lo / step) * step
    while v <= hi:
        y = _y(v, lo, hi)
        d.line([(PAD_L, y), (W - PAD_R, y)], fill=(221, 221, 221))
        d.text((8, y - 7), f"{v:g}", fill="black", font=font)
        v += step
    if len(pts) > 1:
        d.line(pts, fill=(31, 119, 180), width=2)
    for (x, y), r in zip(pts, rows):
        box = [x - 3, y - 3, x + 3, y + 3]
        d.ellipse(box, outline=(31, 119, 180),
                  fill=(31, 119, 180) if r.quantized_inputs else "white")
    for i in marks:
        x, y = pts[i]
        d.text((x + 4, y + 4), rows[i].node[:30], fill=(214, 39, 40), font=font)
    d.text((PAD_L, H - 22), "layer (topological order); filled: op reads quantized inputs; "
           "red: largest SQNR drops", fill="black", font=font)
    img.save(path)
