"""Small inline-SVG charts for the HTML report: bars with error bars, x–y plots, a heatmap, a block diagram.

Plain strings, no dependencies, no scripts and no external references, so a report is one self-contained file that
any browser renders (and that stays readable as text). Every mark carries a ``<title>`` — the browser shows it as a
tooltip — so exact values are one hover away. Coordinates are rounded to 0.1 px to keep files small.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["PALETTE", "Bar", "HLine", "Series", "bar_chart", "block_diagram", "heatmap", "nice_ticks", "xy_chart"]

PALETTE = {"blue": "#2f6cb3", "light": "#9fbde0", "orange": "#e07b24", "red": "#c0392b", "green": "#2e8b57",
           "gray": "#7f8c8d", "gold": "#f1c40f", "ink": "#222", "grid": "#e5e5e5", "purple": "#8e44ad"}
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"


@dataclass
class Bar:
    """One bar: its label, height, optional ± error, highlight, and a tooltip."""

    label: str
    value: float
    error: float = 0.0
    highlight: bool = False
    tooltip: str = ""


@dataclass
class HLine:
    """A horizontal reference line (a baseline), with an optional ± band."""

    value: float
    label: str
    color: str = PALETTE["gray"]
    dash: str = "6 4"
    band: float = 0.0


@dataclass
class Series:
    """Points of an x–y chart drawn as markers, a line or a step line (``tooltips`` parallel to ``points``)."""

    name: str
    points: list[tuple[float, float]]
    mode: str = "markers"  # markers | line | step
    color: str = PALETTE["blue"]
    tooltips: list[str] = field(default_factory=list)
    size: float = 3.5
    hollow: bool = False


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if math.isfinite(v) else "0"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _title(text: str) -> str:
    return f"<title>{_esc(text)}</title>" if text else ""


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], first
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


def _range(values: Sequence[float], *, unit: bool = False) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return (0.0, 1.0)
    lo, hi = min(vals), max(vals)
    pad = max(0.02 if unit else 0.0, 0.08 * (hi - lo)) or (abs(hi) * 0.1 or 1.0)
    lo, hi = lo - pad, hi + pad
    if unit:
        lo, hi = max(0.0, lo), min(1.0, hi) if hi <= 1.0 + pad else hi
    return lo, hi


class _Frame:
    """A plot area inside an SVG: data → pixels, axes, ticks and labels."""

    def __init__(self, width: int, height: int, xlim: tuple[float, float], ylim: tuple[float, float], *,
                 left: int = 58, right: int = 16, top: int = 28, bottom: int = 46, log_x: bool = False) -> None:
        self.w, self.h, self.log_x = width, height, log_x
        self.x0, self.x1, self.y0, self.y1 = left, width - right, height - bottom, top
        self.xlim = tuple(math.log10(max(v, 1e-12)) for v in xlim) if log_x else xlim
        self.ylim = ylim

    def x(self, v: float) -> float:
        if self.log_x:
            v = math.log10(max(v, 1e-12))
        lo, hi = self.xlim
        return self.x0 + (v - lo) / ((hi - lo) or 1.0) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.y0 - (v - lo) / ((hi - lo) or 1.0) * (self.y0 - self.y1)

    def axes(self, *, xlabel: str, ylabel: str, xticks: bool = True) -> list[str]:
        out = []
        for t in nice_ticks(*self.ylim):
            if self.ylim[0] - 1e-12 <= t <= self.ylim[1] + 1e-12:
                y = self.y(t)
                out.append(f'<line x1="{_f(self.x0)}" x2="{_f(self.x1)}" y1="{_f(y)}" y2="{_f(y)}" '
                           f'stroke="{PALETTE["grid"]}"/>')
                out.append(f'<text x="{_f(self.x0 - 6)}" y="{_f(y + 4)}" text-anchor="end" font-size="11">'
                           f'{_esc(_fmt(t))}</text>')
        if xticks:
            lo, hi = self.xlim
            ticks = ([10 ** e for e in range(math.floor(lo), math.ceil(hi) + 1)] if self.log_x else
                     nice_ticks(lo, hi, 6))
            for t in ticks:
                tv = math.log10(t) if self.log_x else t
                if lo - 1e-12 <= tv <= hi + 1e-12:
                    x = self.x(t)
                    out.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(self.y0)}" y2="{_f(self.y0 + 4)}" '
                               f'stroke="{PALETTE["ink"]}"/>')
                    out.append(f'<text x="{_f(x)}" y="{_f(self.y0 + 17)}" text-anchor="middle" font-size="11">'
                               f'{_esc(_fmt(t))}</text>')
        out.append(f'<line x1="{_f(self.x0)}" x2="{_f(self.x1)}" y1="{_f(self.y0)}" y2="{_f(self.y0)}" '
                   f'stroke="{PALETTE["ink"]}"/>')
        out.append(f'<line x1="{_f(self.x0)}" x2="{_f(self.x0)}" y1="{_f(self.y0)}" y2="{_f(self.y1)}" '
                   f'stroke="{PALETTE["ink"]}"/>')
        out.append(f'<text x="{_f((self.x0 + self.x1) / 2)}" y="{_f(self.h - 6)}" text-anchor="middle" '
                   f'font-size="12">{_esc(xlabel)}</text>')
        cy = (self.y0 + self.y1) / 2
        out.append(f'<text x="14" y="{_f(cy)}" text-anchor="middle" font-size="12" '
                   f'transform="rotate(-90 14 {_f(cy)})">{_esc(ylabel)}</text>')
        return out


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{_esc(label)}" style="{_FONT};max-width:100%;height:auto">'
            f'{_title(label)}' + "".join(body) + "</svg>")


def _legend(items: list[tuple[str, str, str]], x: float, y: float) -> list[str]:
    """Legend entries (label, color, kind: box | line | dash | dot) in one row starting at (x, y)."""
    out = []
    for label, color, kind in items:
        if kind == "box":
            out.append(f'<rect x="{_f(x)}" y="{_f(y - 9)}" width="12" height="10" fill="{color}"/>')
        elif kind == "dot":
            out.append(f'<circle cx="{_f(x + 6)}" cy="{_f(y - 4)}" r="4" fill="{color}"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
            out.append(f'<line x1="{_f(x)}" x2="{_f(x + 14)}" y1="{_f(y - 4)}" y2="{_f(y - 4)}" stroke="{color}" '
                       f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{_f(x + 18)}" y="{_f(y)}" font-size="11">{_esc(label)}</text>')
        x += 28 + 6.2 * len(label)
    return out


def bar_chart(bars: Sequence[Bar], *, lines: Sequence[HLine] = (), ylabel: str = "validation accuracy",
              xlabel: str = "block", title: str = "", unit: bool = True, height: int = 300) -> str:
    """Bars with ± error bars and horizontal baselines; highlighted bars are drawn in the accent colour."""
    n = max(1, len(bars))
    width = max(420, 70 + 34 * n)
    ylim = _range([b.value - b.error for b in bars] + [b.value + b.error for b in bars] +
                  [ln.value for ln in lines], unit=unit)
    if unit:
        ylim = (ylim[0], ylim[1])
    fr = _Frame(width, height + 20, (0, n), ylim, bottom=92)
    body = fr.axes(xlabel=xlabel, ylabel=ylabel, xticks=False)
    slot = (fr.x1 - fr.x0) / n
    for i, b in enumerate(bars):
        cx, bw = fr.x0 + slot * (i + 0.5), slot * 0.7
        top, base = fr.y(b.value), fr.y(max(ylim[0], min(0.0, ylim[1])) if ylim[0] <= 0 else ylim[0])
        color = PALETTE["orange"] if b.highlight else PALETTE["blue"]
        tip = b.tooltip or f"{b.label}: {b.value:.4f}" + (f" ± {b.error:.4f}" if b.error else "")
        body.append(f'<rect x="{_f(cx - bw / 2)}" y="{_f(min(top, base))}" width="{_f(bw)}" '
                    f'height="{_f(max(1.0, abs(base - top)))}" fill="{color}">{_title(tip)}</rect>')
        if b.error > 0:
            lo, hi = fr.y(b.value - b.error), fr.y(b.value + b.error)
            body.append(f'<path d="M{_f(cx)} {_f(lo)}V{_f(hi)}M{_f(cx - 4)} {_f(lo)}h8M{_f(cx - 4)} {_f(hi)}h8" '
                        f'stroke="{PALETTE["ink"]}" fill="none"/>')
        ty = fr.y0 + 10
        body.append(f'<text x="{_f(cx)}" y="{_f(ty)}" font-size="10" text-anchor="end" '
                    f'transform="rotate(-45 {_f(cx)} {_f(ty)})">{_esc(b.label)}</text>')
    legend = []
    for ln in lines:
        y = fr.y(ln.value)
        if ln.band > 0:
            y0, y1 = fr.y(ln.value + ln.band), fr.y(ln.value - ln.band)
            body.append(f'<rect x="{_f(fr.x0)}" y="{_f(y0)}" width="{_f(fr.x1 - fr.x0)}" height="{_f(y1 - y0)}" '
                        f'fill="{ln.color}" fill-opacity="0.12"/>')
        body.append(f'<line x1="{_f(fr.x0)}" x2="{_f(fr.x1)}" y1="{_f(y)}" y2="{_f(y)}" stroke="{ln.color}" '
                    f'stroke-width="1.6" stroke-dasharray="{ln.dash}">{_title(f"{ln.label}: {ln.value:.4f}")}</line>')
        legend.append((f"{ln.label} {ln.value:.3f}", ln.color, "dash"))
    if any(b.highlight for b in bars):
        legend.append(("chosen", PALETTE["orange"], "box"))
    body += _legend(legend, fr.x0 + 4, 16)
    return _svg(width, height + 20, body, title or ylabel)


def xy_chart(series: Sequence[Series], *, xlabel: str, ylabel: str, title: str = "", unit_y: bool = True,
             log_x: bool = False, width: int = 560, height: int = 320, xlim: tuple[float, float] | None = None) -> str:
    """Markers, lines and step lines on shared axes, with a legend."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    if xlim is None:
        if log_x:
            pos = [x for x in xs if x > 0] or [1.0]
            xlim = (min(pos) / 1.5, max(pos) * 1.5)
        else:
            lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
            pad = 0.04 * (hi - lo) or 0.5
            xlim = (lo - pad, hi + pad)
    fr = _Frame(width, height, xlim, _range(ys, unit=unit_y), log_x=log_x)
    body = fr.axes(xlabel=xlabel, ylabel=ylabel)
    legend = []
    for s in series:
        pts = [(fr.x(x), fr.y(y)) for x, y in s.points if math.isfinite(x) and math.isfinite(y)]
        if not pts:
            continue
        if s.mode in ("line", "step"):
            d = f"M{_f(pts[0][0])} {_f(pts[0][1])}"
            for (px, py), (qx, qy) in zip(pts, pts[1:]):
                d += f"H{_f(qx)}V{_f(qy)}" if s.mode == "step" else f"L{_f(qx)} {_f(qy)}"
            body.append(f'<path d="{d}" fill="none" stroke="{s.color}" stroke-width="2">{_title(s.name)}</path>')
            legend.append((s.name, s.color, "line"))
        else:
            fill = "none" if s.hollow else s.color
            for i, (px, py) in enumerate(pts):
                tip = s.tooltips[i] if i < len(s.tooltips) else s.name
                body.append(f'<circle cx="{_f(px)}" cy="{_f(py)}" r="{_f(s.size)}" fill="{fill}" stroke="{s.color}" '
                            f'stroke-width="1.4" fill-opacity="0.85">{_title(tip)}</circle>')
            legend.append((s.name, s.color, "dot"))
    body += _legend(legend, fr.x0 + 4, 16)
    return _svg(width, height, body, title or f"{ylabel} vs {xlabel}")


def heatmap(matrix: Sequence[Sequence[float]], labels: Sequence[str], *, title: str = "",
            tooltip_labels: Sequence[str] | None = None) -> str:
    """A square matrix as coloured cells (white → blue by value; blank where NaN), values written in the cells."""
    n = len(labels)
    cell = max(22, min(44, 440 // max(1, n)))
    left, top = 70, 30
    width, height = left + n * cell + 90, top + n * cell + 60
    vals = [v for row in matrix for v in row if v is not None and math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    body = []
    names = list(tooltip_labels or labels)
    for i in range(n):
        for j in range(n):
            v = matrix[i][j]
            x, y = left + j * cell, top + i * cell
            if v is None or not math.isfinite(v):
                body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="#fafafa" stroke="#fff"/>')
                continue
            t = (v - lo) / ((hi - lo) or 1.0)
            r, g, b = (int(247 - t * (247 - 33)), int(251 - t * (251 - 102)), int(255 - t * (255 - 172)))
            body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb({r},{g},{b})" stroke="#fff">'
                        f'{_title(f"{names[i]} + {names[j]}: {v:.4f}" if i != j else f"{names[i]} alone: {v:.4f}")}'
                        '</rect>')
            if cell >= 30:
                body.append(f'<text x="{_f(x + cell / 2)}" y="{_f(y + cell / 2 + 4)}" text-anchor="middle" '
                            f'font-size="10" fill="{"#fff" if t > 0.55 else PALETTE["ink"]}">{v:.2f}</text>')
    for k, lab in enumerate(labels):
        body.append(f'<text x="{left - 6}" y="{_f(top + k * cell + cell / 2 + 4)}" text-anchor="end" '
                    f'font-size="11">{_esc(lab)}</text>')
        body.append(f'<text x="{_f(left + k * cell + cell / 2)}" y="{top + n * cell + 16}" text-anchor="middle" '
                    f'font-size="11">{_esc(lab)}</text>')
    gx = left + n * cell + 18
    for k in range(10):  # the colour scale
        t = 1 - k / 9
        r, g, b = (int(247 - t * (247 - 33)), int(251 - t * (251 - 102)), int(255 - t * (255 - 172)))
        body.append(f'<rect x="{gx}" y="{top + k * 14}" width="14" height="14" fill="rgb({r},{g},{b})"/>')
    body.append(f'<text x="{gx + 18}" y="{top + 10}" font-size="10">{hi:.3f}</text>')
    body.append(f'<text x="{gx + 18}" y="{top + 136}" font-size="10">{lo:.3f}</text>')
    body.append(f'<text x="{_f(left + n * cell / 2)}" y="{height - 8}" text-anchor="middle" font-size="12">'
                'block j (diagonal: block alone)</text>')
    return _svg(width, height, body, title or "pair heatmap")


def block_diagram(names: Sequence[str], params: Sequence[int], tuned: set[int], *, stem_params: int = 0,
                  head_params: int = 0, title: str = "") -> str:
    """The network as a row of boxes (stem, blocks, head; wrapped into rows); tuned blocks and the head highlighted."""
    items = [("stem", stem_params, "stem")] + [(n, p, "tuned" if i in tuned else "frozen")
                                               for i, (n, p) in enumerate(zip(names, params))]
    items.append(("head", head_params, "head"))
    per_row = 9
    box_w, box_h, gap, left, top = 86, 46, 14, 10, 30
    rows = math.ceil(len(items) / per_row)
    width = left * 2 + per_row * box_w + (per_row - 1) * gap
    height = top + rows * (box_h + 30) - 14
    fills = {"stem": ("#ecf0f1", PALETTE["gray"]), "frozen": ("#dfe6ee", PALETTE["gray"]),
             "tuned": (PALETTE["orange"], "#8a4a12"), "head": (PALETTE["green"], "#1d5c39")}
    body = []
    for k, (name, p, kind) in enumerate(items):
        r, c = divmod(k, per_row)
        x, y = left + c * (box_w + gap), top + r * (box_h + 30)
        fill, stroke = fills[kind]
        index = "" if kind in ("stem", "head") else f"#{k - 1} "
        tip = f"{index}{name}: {p:,} parameters, {'trained' if kind in ('tuned', 'head') else 'frozen'}"
        body.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="{fill}" stroke="{stroke}" '
                    f'stroke-width="{2 if kind == "tuned" else 1}">{_title(tip)}</rect>')
        short = name if len(name) <= 13 else "…" + name[-12:]
        color = "#fff" if kind in ("tuned", "head") else PALETTE["ink"]
        body.append(f'<text x="{x + box_w / 2}" y="{y + 19}" text-anchor="middle" font-size="11" fill="{color}">'
                    f'{_esc(index + short)}</text>')
        body.append(f'<text x="{x + box_w / 2}" y="{y + 35}" text-anchor="middle" font-size="10" fill="{color}">'
                    f'{_esc(_count(p))}</text>')
        if c < per_row - 1 and k < len(items) - 1:
            body.append(f'<path d="M{x + box_w + 2} {y + box_h / 2}h{gap - 4}" stroke="{PALETTE["gray"]}" '
                        'marker-end="none"/>')
    body += _legend([("tuned block", PALETTE["orange"], "box"), ("new head (always trained)", PALETTE["green"], "box"),
                     ("frozen", "#dfe6ee", "box")], left, 18)
    return _svg(width, height, body, title or "block diagram")


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)
