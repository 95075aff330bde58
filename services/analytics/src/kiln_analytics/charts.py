"""Charts drawn as inline SVG on the server: no script, no external library, nothing to fetch.

Every text that reaches the SVG (repository names included) is escaped here, so a name such as
``<script>`` or ``a"b`` is shown as written and never interpreted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

WIDTH = 720
ROW = 22
COLOURS = {"success": "#2f8f4e", "failure": "#c8423a", "p50": "#3b6fb6", "p95": "#9db8de", "bar": "#3b6fb6"}


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def launches_over_time(buckets: list[dict[str, object]], window_s: int, since: float, until: float) -> str:
    """Stacked columns of successful and failed launches per bucket, empty buckets included."""
    start = int(since // window_s * window_s)
    slots = list(range(start, int(until) + 1, window_s))[-200:]  # at most 200 columns stay readable
    counts = {int(b["start"]): b for b in buckets}  # type: ignore[call-overload]
    height, top, left = 220, 10, 40
    peak = max((int(counts[s]["success"]) + int(counts[s]["failure"]) for s in slots if s in counts), default=0)  # type: ignore[call-overload]
    scale = (height - top) / max(peak, 1)
    step = (WIDTH - left) / max(len(slots), 1)
    parts = [(f'<svg class="chart" viewBox="0 0 {WIDTH} {height + 30}" role="img" '
              f'aria-label="Launches over time, {sum(1 for s in slots if s in counts)} periods with launches">')]
    parts.append(f'<text x="0" y="{top + 8}" class="axis">{peak}</text><text x="0" y="{height}" class="axis">0</text>')
    for i, slot in enumerate(slots):
        bucket = counts.get(slot)
        if not bucket:
            continue
        x = left + i * step
        y = float(height)
        for kind in ("success", "failure"):
            value = int(bucket[kind])  # type: ignore[call-overload]
            if value:
                h = value * scale
                y -= h
                label = escape(f"{_stamp(slot, window_s)}: {value} {kind}")
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(step - 1, 1):.1f}" height="{h:.1f}" '
                             f'fill="{COLOURS[kind]}"><title>{label}</title></rect>')
    for i in (0, len(slots) - 1) if slots else ():
        anchor = "start" if i == 0 else "end"
        parts.append(f'<text x="{left + i * step + (step if i else 0):.1f}" y="{height + 20}" text-anchor="{anchor}" '
                     f'class="axis">{escape(_stamp(slots[i], window_s))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def phase_bars(timings: dict[str, dict[str, float | None]]) -> str:
    """Horizontal bars of p50 and p95 seconds for each span."""
    names = [n for n, t in timings.items() if t.get("count")]
    peak = max((t["p95"] or 0 for n, t in timings.items() if n in names), default=0) or 1
    left, bar_w = 110, WIDTH - 110 - 90
    height = ROW * 2 * max(len(names), 1) + 10
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="Time per phase, p50 and p95">']
    if not names:
        parts.append('<text x="0" y="20" class="axis">No finished requests in this period.</text>')
    for i, name in enumerate(names):
        t = timings[name]
        y = 5 + i * ROW * 2
        parts.append(f'<text x="0" y="{y + 15}" class="label">{escape(name)}</text>')
        for j, q in enumerate(("p50", "p95")):
            value = float(t[q] or 0)
            w = max(value / peak * bar_w, 1)
            parts.append(f'<rect x="{left}" y="{y + j * ROW / 1.2:.1f}" width="{w:.1f}" height="{ROW / 1.4:.1f}" '
                         f'fill="{COLOURS[q]}"><title>{escape(name)} {q}: {_fmt_seconds(t[q])}</title></rect>'
                         f'<text x="{left + w + 5:.1f}" y="{y + j * ROW / 1.2 + 12:.1f}" class="axis">'
                         f'{q} {_fmt_seconds(t[q])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def count_bars(items: list[tuple[str, int]], aria: str) -> str:
    """Horizontal bars for labelled counts (top repositories, failure causes)."""
    peak = max((n for _, n in items), default=0) or 1
    left = 300
    height = ROW * max(len(items), 1) + 10
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(aria)}">']
    if not items:
        parts.append('<text x="0" y="20" class="axis">Nothing in this period.</text>')
    for i, (label, n) in enumerate(items):
        y = 5 + i * ROW
        shown = label if len(label) <= 45 else label[:21] + "…" + label[-21:]
        w = max(n / peak * (WIDTH - left - 60), 1)
        parts.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" class="label"><title>{escape(label)}</title>'
                     f'{escape(shown)}</text><rect x="{left}" y="{y}" width="{w:.1f}" height="{ROW - 6}" '
                     f'fill="{COLOURS["bar"]}"/><text x="{left + w + 5:.1f}" y="{y + 14}" class="axis">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _stamp(epoch: int, window_s: int) -> str:
    fmt = "%Y-%m-%d %H:00" if window_s < 86400 else "%Y-%m-%d"
    return datetime.fromtimestamp(epoch, UTC).strftime(fmt)
