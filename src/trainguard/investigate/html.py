"""A self-contained HTML report: summary, ranked causes, loss curves of both runs (inline SVG, with
events marked at their step), differences and timeline. No scripts, no external assets: it opens
offline and in mail clients, and event details (written by the jobs under investigation, so
possibly hostile) are escaped everywhere they appear, including inside the SVG.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from trainguard.investigate.timeline import MetricPoint, clip, fmt_time

if TYPE_CHECKING:
    from trainguard.investigate import Investigation

#: points drawn per curve (longer runs are thinned evenly; non-finite points are always kept)
MAX_POINTS = 2000
#: event markers drawn on the chart
MAX_MARKERS = 40
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 320, 70, 20, 20, 40

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f6f6f6}code{font-size:12px;word-break:break-all}
.bad{color:#b00020;font-weight:600}.ok{color:#176f2c;font-weight:600}
.cause{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:8px 0}
.cause.top{border-color:#b00020;background:#fff6f6}.score{float:right;font-weight:600}
.who{background:#eef;border-radius:4px;padding:0 4px;margin-right:4px}
.sev-critical,.sev-high{color:#b00020}.sev-medium{color:#a65e00}tr.first{background:#fff0c0}
.muted{color:#777}
"""


def _e(value: object, limit: int = 400) -> str:
    """Escape any value for HTML text or attribute (quotes included), cut to ``limit``."""
    return escape(clip(value if isinstance(value, str) else str(value), limit), quote=True)


def _thin(points: Sequence[MetricPoint]) -> list[MetricPoint]:
    if len(points) <= MAX_POINTS:
        return list(points)
    k = math.ceil(len(points) / MAX_POINTS)
    return [p for i, p in enumerate(points) if i % k == 0 or not p.finite or i == len(points) - 1]


def _step_at(points: Sequence[MetricPoint], t: float) -> int | None:
    """The step a run was at, at time ``t`` (the last metric sample not after it)."""
    if not points:
        return None
    times = [p.time for p in points]
    i = bisect_right(times, t) - 1
    return points[max(i, 0)].step


def loss_svg(inv: Investigation) -> str:
    """Inline SVG with the loss curves of the run and its baseline, events marked."""
    bad = _thin(inv.run.metrics) if inv.run else []
    base = _thin(inv.baseline.metrics) if inv.baseline else []
    finite = [p.loss for p in [*bad, *base] if p.finite and p.loss is not None]
    if not bad and not base:
        return '<p class="muted">No loss samples (guard.metric events) recorded.</p>'
    steps = [p.step for p in [*bad, *base]]
    x0, x1 = min(steps), max(steps)
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    log = lo > 0 and hi / lo > 50
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(step: float) -> float:
        return PAD_L + (step - x0) / max(x1 - x0, 1) * pw

    def sy(loss: float) -> float:
        v = math.log10(loss) if log else loss
        return PAD_T + (1 - (v - lo) / (hi - lo)) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="loss curves">',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="#fafafa" '
             'stroke="#ccc"/>']
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        label = 10 ** v if log else v
        y = PAD_T + (1 - frac) * ph
        parts.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{_e(f"{label:.4g}")}</text>')
    for edge in (x0, x1):
        parts.append(f'<text x="{sx(edge):.1f}" y="{H - PAD_B + 16}" font-size="11" '
                     f'text-anchor="middle">{_e(edge)}</text>')
    parts.append(f'<text x="{PAD_L + pw / 2}" y="{H - 6}" font-size="12" text-anchor="middle">'
                 f'step{" (loss on a log scale)" if log else ""}</text>')
    for pts, color, name in ((base, "#3366cc", "baseline"), (bad, "#cc2222", "run")):
        xy = " ".join(f"{sx(p.step):.1f},{sy(p.loss):.1f}" for p in pts
                      if p.finite and p.loss is not None)
        if xy:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" '
                         f'points="{xy}"><title>{_e(name)}</title></polyline>')
        for p in pts:
            if not p.finite:
                parts.append(f'<text x="{sx(p.step):.1f}" y="{PAD_T + 12}" fill="{color}" '
                             f'text-anchor="middle" font-size="14">×<title>{_e(name)} step '
                             f'{p.step}: loss {_e(p.raw, 40)}</title></text>')
    # Events marked at their step (details.step, else the run's step at the event's time).
    markers = []
    for t in inv.timeline:
        if not (t.first_anomaly or t.severity not in (None, "info")
                or t.kind in ("artifact.loaded", "guard.load", "artifact.saved")) \
                or t.run != (inv.run.run if inv.run else None):
            continue
        mstep = t.step if t.step is not None else _step_at(inv.run.metrics if inv.run else [],
                                                           t.time)
        if mstep is not None and x0 <= mstep <= x1:
            markers.append((mstep, t))
    anomaly = inv.first_anomaly
    if anomaly is not None and anomaly.step is not None and x0 <= anomaly.step <= x1 \
            and not any(t.seq == anomaly.seq for _, t in markers):
        parts.append(f'<line x1="{sx(anomaly.step):.1f}" x2="{sx(anomaly.step):.1f}" '
                     f'y1="{PAD_T}" y2="{PAD_T + ph}" stroke="#e69500" stroke-width="2">'
                     f'<title>first anomaly: {_e(anomaly.title)}</title></line>')
    for n, (step, t) in enumerate(markers[:MAX_MARKERS], 1):
        color = "#e69500" if t.first_anomaly else ("#b00020" if t.severity else "#777")
        x = sx(step)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" y2="{PAD_T + ph}" '
                     f'stroke="{color}" stroke-dasharray="4 3"><title>{_e(t.kind)} '
                     f'{_e(t.summary or t.subject)}</title></line>'
                     f'<text x="{x + 2:.1f}" y="{PAD_T + 24 + 12 * (n % 5)}" font-size="10" '
                     f'fill="{color}">{n}</text>')
    parts.append(f'<g font-size="12"><rect x="{W - 190}" y="{PAD_T + 6}" width="12" height="3" '
                 f'fill="#cc2222"/><text x="{W - 172}" y="{PAD_T + 11}">'
                 f'run {_e(inv.run.run if inv.run else "", 20)}</text>'
                 f'<rect x="{W - 190}" y="{PAD_T + 22}" width="12" height="3" fill="#3366cc"/>'
                 f'<text x="{W - 172}" y="{PAD_T + 27}">baseline '
                 f'{_e(inv.baseline.run if inv.baseline else "none", 20)}</text></g>')
    parts.append("</svg>")
    if markers:
        parts.append('<ol class="muted">' + "".join(
            f"<li>step {_e(step)}: {_e(t.kind)} {_e(t.summary or t.subject, 200)}</li>"
            for step, t in markers[:MAX_MARKERS]) + "</ol>")
    return "".join(parts)


def render_html(inv: Investigation) -> str:
    """The whole report as one HTML document."""
    verdict = ('<span class="bad">suspicious</span>' if inv.suspicious
               else '<span class="ok">nothing suspicious</span>')
    h: list[str] = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>trainguard investigation: {_e(inv.target, 120)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Investigation of {_e(inv.target_kind)} <code>{_e(inv.target, 200)}</code>: "
        f"{verdict}</h1>", "<table>"]
    rows = [("events read", str(inv.events_read))]
    if inv.run is not None:
        r = inv.run
        rows += [("run", f"{r.run} by {r.who()}, started {fmt_time(r.started)}"),
                 ("code / environment", f"{r.git_commit or '-'} / {r.env_digest or '-'}")]
    rows.append(("baseline", (f"{inv.baseline.run} by {inv.baseline.who()} "
                              if inv.baseline else "none ") + f"({inv.baseline_reason})"))
    a = inv.first_anomaly
    rows.append(("first anomaly", f"{fmt_time(a.time)}"
                 + (f" step {a.step}" if a.step is not None else "") + f" [{a.kind}] {a.title}"
                 if a else "none"))
    h += [f"<tr><th>{_e(k)}</th><td>{_e(v, 600)}</td></tr>" for k, v in rows]
    h.append("</table><h2>Likely causes</h2>")
    if not inv.causes:
        h.append('<p class="muted">None ranked.</p>')
    for c in inv.causes[:100]:
        who = "".join(f'<span class="who">{_e(x.role)}: {_e(x.who)}</span>' for x in c.identities)
        h.append(f'<div class="cause{" top" if c.rank == 1 else ""}">'
                 f'<span class="score">score {c.score}</span><b>{c.rank}. {_e(c.title, 300)}</b>'
                 f"<br>{who}" + (f"<br><code>{_e(c.digest)}</code>" if c.digest else "")
                 + "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in c.reasons[:20]) + "</ul></div>")
    h.append("<h2>Loss curves</h2>" + loss_svg(inv))
    if inv.differences:
        h.append("<h2>Differences from the baseline</h2><table><tr><th>area</th><th>key</th>"
                 "<th>baseline</th><th>this run</th></tr>")
        h += [f"<tr><td>{_e(d.area)}</td><td><code>{_e(d.key)}</code></td>"
              f"<td>{_e(d.baseline or '-')}</td><td>{_e(d.bad or '-')}</td></tr>"
              for d in inv.differences[:500]]
        h.append("</table>")
    h.append(f"<h2>Timeline</h2><p class=\"muted\">{len(inv.timeline)} events shown"
             + (f", {inv.timeline_omitted} left out" if inv.timeline_omitted else "")
             + "</p><table><tr><th>#</th><th>time (UTC)</th><th>kind</th><th>who</th>"
               "<th>what</th></tr>")
    for t in inv.timeline:
        sev = f' <span class="sev-{_e(t.severity)}">{_e(t.severity)}</span>' if t.severity else ""
        cls = ' class="first"' if t.first_anomaly else ""
        h.append(f"<tr{cls}><td>{t.seq}</td>"
                 f"<td>{_e(fmt_time(t.time))}</td><td>{_e(t.kind)}{sev}</td><td>{_e(t.who)}</td>"
                 f"<td>{_e(t.summary or t.subject, 300)}</td></tr>")
    h.append("</table>")
    if inv.warnings:
        h.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in inv.warnings)
                 + "</ul>")
    h.append("</body></html>\n")
    return "".join(h)
