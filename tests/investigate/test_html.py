"""The HTML report: self-contained, every attacker-controlled string escaped, loss curves drawn."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from investigate.helpers import Clock, dig, ev, synthetic_events, who
from trainguard.core.events import EventKind
from trainguard.core.findings import Severity
from trainguard.investigate import investigate
from trainguard.investigate.html import render_html

K = EventKind
SCRIPT = '<script>alert("x")</script>'


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


def test_report_has_curves_causes_and_no_external_assets() -> None:
    html = render_html(investigate(synthetic_events(), "B"))
    tags = _parse(html)
    assert html.startswith("<!DOCTYPE html>")
    assert tags.tags.count("polyline") == 2  # the run and its baseline
    assert "svg" in tags.tags
    assert "script" not in tags.tags
    assert not {"link", "img", "iframe", "object", "embed"} & set(tags.tags)
    assert not [a for a in tags.attrs if a[0] in ("src", "href") or a[0].startswith("on")]
    # the only URL is the SVG namespace
    assert set(re.findall(r"https?://[^\"' ]+", html)) == {"http://www.w3.org/2000/svg"}
    first_cause = html.index('class="cause top"')
    assert "mallory@gpu-07" in html[first_cause:first_cause + 2000]
    assert "ckpt/base.pt" in html[first_cause:first_cause + 2000]


def test_events_are_marked_on_the_curve_at_their_step() -> None:
    events = synthetic_events(tamper=False)
    t = max(e.time for e in events)
    events.append(ev(K.GUARD_MONITOR, "run:B", {"message": "grad spike", "step": 6},
                     identity=who("alice", "B"), t=t + 1, severity=Severity.HIGH,
                     rule_id="TG-GRD-777"))
    html = render_html(investigate(events, "B"))
    assert "step 6: guard.monitor" in html
    assert 'stroke-dasharray="4 3"' in html


def test_hostile_details_are_escaped_everywhere() -> None:
    clock = Clock()
    evil_user = who(SCRIPT, "B", host=SCRIPT)
    events = synthetic_events()
    events += [
        ev(K.ARTIFACT_SAVED, dig("x"), {"path": f"{SCRIPT}.pt"}, identity=evil_user,
           t=clock()),
        ev(K.ARTIFACT_LOADED, dig("x"), {"path": f"{SCRIPT}.pt"}, identity=evil_user,
           t=clock()),
        ev(K.GUARD_MONITOR, SCRIPT,
           {"message": SCRIPT, "step": 2, "location": "\"'><svg onload=x>"},
           identity=evil_user, t=clock(), severity=Severity.CRITICAL, rule_id=SCRIPT),
        ev(K.GUARD_METRIC, "m", {"step": 11, "loss": "nan", "lr": SCRIPT}, identity=evil_user,
           t=clock()),
    ]
    html = render_html(investigate(events, "B"))
    tags = _parse(html)
    assert "script" not in tags.tags
    assert "<script" not in html
    assert "&lt;script&gt;" in html
    assert not [a for a in tags.attrs if a[0].startswith("on")]
    assert "×" in html  # the non-finite loss is marked on the chart


def test_report_without_metrics_or_baseline() -> None:
    events = [ev(K.RUN_STARTED, "solo", identity=who("alice", "solo"), t=1.0)]
    html = render_html(investigate(events, "solo"))
    assert "No loss samples" in html
    assert "nothing suspicious" in html
