"""Inline SVG plots: no library, no script, no network; text escaped (VM names are data).

``timeline`` draws one VM's generations on a time axis: a bar of logical size and a bar of
new stored bytes per generation, protected ones marked. ``growth`` draws the repository's
cumulative stored and logical bytes over time. ``ratios`` draws horizontal bars. Each mark
carries a ``<title>`` (the browser's tooltip) with the exact figure.
"""
from __future__ import annotations

from html import escape

from repofs.cli.units import format_size, format_time

W, H, PAD = 720, 200, 48


def _x(t: int, t0: int, t1: int) -> float:
    return PAD + (W - 2 * PAD) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.5)


def _y(v: float, top: float) -> float:
    return H - PAD + 0 - (H - 2 * PAD) * (v / top if top else 0)


def _axis(t0: int, t1: int, top: float) -> list[str]:
    out = [f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#555"/>',
           f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#555"/>',
           f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end" font-size="10">{escape(format_size(top))}</text>',
           f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">{escape(format_time(t0))}</text>']
    if t1 > t0:
        out.append(f'<text x="{W - PAD}" y="{H - PAD + 14}" text-anchor="end" font-size="10">'
                   f'{escape(format_time(t1))}</text>')
    return out


def timeline(vm: str, gens: list[dict]) -> str:
    t0, t1 = min(g["time_ns"] for g in gens), max(g["time_ns"] for g in gens)
    top = max([g["logical_bytes"] for g in gens] + [g["new_bytes"] for g in gens] + [1])
    bar = max(3.0, min(24.0, (W - 2 * PAD) / (2.5 * len(gens))))
    parts = _axis(t0, t1, top)
    for g in gens:
        x = _x(g["time_ns"], t0, t1)
        for value, dx, color, what in ((g["logical_bytes"], -bar, "#4e79a7", "logical"),
                                       (g["new_bytes"], 0, "#f28e2b", "new stored")):
            y = _y(value, top)
            parts.append(f'<rect class="bar {what.replace(" ", "-")}" x="{x + dx:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                         f'height="{H - PAD - y:.1f}" fill="{color}" data-bytes="{value}"><title>'
                         f'{escape(g["generation"])}: {what} {escape(format_size(value))} ({value} bytes)</title></rect>')
        if g["protected"]:
            parts.append(f'<g class="protected"><circle cx="{x:.1f}" cy="{PAD - 10}" r="4" fill="#e15759"/>'
                         f'<title>{escape(g["generation"])} is protected</title></g>')
    legend = ('<rect x="60" y="8" width="10" height="10" fill="#4e79a7"/><text x="74" y="17" font-size="11">logical size</text>'
              '<rect x="170" y="8" width="10" height="10" fill="#f28e2b"/><text x="184" y="17" font-size="11">new stored bytes</text>'
              '<circle cx="305" cy="13" r="4" fill="#e15759"/><text x="313" y="17" font-size="11">protected</text>')
    return (f'<svg class="plot timeline" role="img" aria-label="generations of {escape(vm, quote=True)}" '
            f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">'
            + legend + "".join(parts) + "</svg>")


def growth(gens: list[dict]) -> str:
    ordered = sorted(gens, key=lambda g: g["time_ns"])
    if not ordered:
        return ""
    stored = logical = 0
    points_s, points_l = [], []
    t0, t1 = ordered[0]["time_ns"], ordered[-1]["time_ns"]
    cum = []
    for g in ordered:
        stored += g["new_bytes"]
        logical += g["logical_bytes"]
        cum.append((g["time_ns"], stored, logical))
    top = max(max(c[1] for c in cum), max(c[2] for c in cum), 1)
    for t, s, lg in cum:
        points_s.append(f"{_x(t, t0, t1):.1f},{_y(s, top):.1f}")
        points_l.append(f"{_x(t, t0, t1):.1f},{_y(lg, top):.1f}")
    parts = _axis(t0, t1, top)
    parts.append(f'<polyline class="logical" fill="none" stroke="#4e79a7" stroke-width="2" points="{" ".join(points_l)}"/>')
    parts.append(f'<polyline class="stored" fill="none" stroke="#e15759" stroke-width="2" points="{" ".join(points_s)}"/>')
    parts.append(f'<text x="{W - PAD}" y="{_y(stored, top) - 4:.1f}" text-anchor="end" font-size="11" '
                 f'data-bytes="{stored}">stored {escape(format_size(stored))}</text>')
    legend = ('<rect x="60" y="8" width="10" height="10" fill="#4e79a7"/><text x="74" y="17" font-size="11">logical (sum of generations)</text>'
              '<rect x="250" y="8" width="10" height="10" fill="#e15759"/><text x="264" y="17" font-size="11">stored (new bytes written)</text>')
    return (f'<svg class="plot growth" role="img" aria-label="repository growth" viewBox="0 0 {W} {H}" '
            f'width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">' + legend + "".join(parts) + "</svg>")


def ratios(items: list[tuple[str, float | None]]) -> str:
    shown = [(label, v) for label, v in items if v]
    if not shown:
        return ""
    top = max(v for _l, v in shown)
    rows = []
    for i, (label, v) in enumerate(shown):
        y = 10 + i * 26
        width = (W - 260) * v / top
        rows.append(f'<text x="180" y="{y + 14}" text-anchor="end" font-size="12">{escape(label)}</text>'
                    f'<rect x="190" y="{y}" width="{width:.1f}" height="18" fill="#59a14f" data-ratio="{v}">'
                    f'<title>{escape(label)} {v:.2f}x</title></rect>'
                    f'<text x="{196 + width:.1f}" y="{y + 14}" font-size="12">{v:.2f}x</text>')
    h = 20 + 26 * len(shown)
    return (f'<svg class="plot ratios" role="img" aria-label="ratios" viewBox="0 0 {W} {h}" width="{W}" '
            f'height="{h}" xmlns="http://www.w3.org/2000/svg">' + "".join(rows) + "</svg>")
