"""The HTML pages of ``msmtfn-predict --explain``: self-contained and offline (inline CSS, inline
SVG figures, audio as data URIs, a few lines of inline script to sort the index; no request leaves
the page). Colours: green raised the predicted class's probability, red lowered it; audio blue,
text orange."""

from __future__ import annotations

import base64
import math
from html import escape

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;
max-width:1100px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 8px} .muted{color:#667}
table{border-collapse:collapse;width:100%} th,td{padding:4px 8px;border-bottom:1px solid #e3e6ea;
text-align:left;vertical-align:top} th{background:#f4f6f8;cursor:pointer;user-select:none}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{display:inline-block;height:10px;background:#4a7bd0;vertical-align:middle}
.probs td{border:none;padding:1px 6px} mark{border-radius:3px;padding:0 2px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
.seg{border-left:4px solid #ccd;padding:6px 10px;margin:8px 0;background:#fafbfc}
.seg.top{border-left-color:#1f9d55} audio{height:28px;vertical-align:middle}
"""
SORT_JS = """
document.querySelectorAll('th').forEach((th,i)=>th.addEventListener('click',()=>{
const t=th.closest('table'),b=t.tBodies[0],r=[...b.rows],d=th.dataset.d=th.dataset.d==='a'?'d':'a';
const v=x=>{const c=x.cells[i],s=c.dataset.v??c.textContent;const f=parseFloat(s);
return isNaN(f)?s.toLowerCase():f};
r.sort((x,y)=>{const a=v(x),c=v(y);return (a<c?-1:a>c?1:0)*(d==='a'?1:-1)});
r.forEach(x=>b.appendChild(x))}));
"""
GREEN, RED, BLUE, ORANGE = "#1f9d55", "#d64545", "#4a7bd0", "#e08a1e"
MARK_AT = 0.01  # the least change of probability a marked word stands for


def _page(title: str, body: str, script: str = "") -> str:
    # the CSP forbids every request the page might make (network, even images): offline by design
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "img-src data:; media-src data:"
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>"
    )


def _f(x, digits: int = 3) -> str:
    return "" if x is None or not math.isfinite(float(x)) else f"{float(x):+.{digits}f}"


def _p(x) -> str:
    return "" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def _answer_text(answer: dict) -> str:
    if "value" in answer:
        return f"{answer['value']:.3f}"
    p = answer.get("probs", {}).get(answer.get("label"))
    return f"{answer.get('label', '')}" + (f" ({p:.2f})" if p is not None else "")


# ----------------------------------------------------------------------------------- the index
def index_page(entries: list[dict], main: str, run: str) -> str:
    rows = []
    for e in entries:
        v, page = e["view"], e["page"]
        link = (
            f'<a href="{escape(page)}">{escape(v["call_id"])}</a>' if page else escape(v["call_id"])
        )
        text = v.get("top_text", "")
        rows.append(
            "<tr>"
            f"<td>{link}</td><td>{escape(str(v.get('label') or ''))}</td>"
            f'<td class=n data-v="{v.get("probability", "")}">{_p(v.get("probability"))}</td>'
            f"<td class=n>{v.get('segments', '')}</td>"
            f'<td class=n data-v="{v.get("top_segment", "")}">{v.get("top_segment", "")}</td>'
            f'<td class=n data-v="{v.get("top_contribution", "")}">'
            f"{_f(v.get('top_contribution'))}</td>"
            f"<td>{escape(text[:90] + ('…' if len(text) > 90 else ''))}</td>"
            f"<td>{escape(v['status'])}</td></tr>"
        )
    heads = [
        "call",
        f"predicted ({escape(main)})",
        "probability",
        "segments",
        "top segment",
        "its contribution",
        "its transcript",
        "status",
    ]
    body = (
        f"<h1>Call report</h1><div class=muted>run {escape(run)} · {len(entries)} calls · "
        f"task {escape(main)} · click a column to sort · the top segment is the one whose "
        "leaving out moves the probability most</div>"
        "<table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in heads)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    return _page("msmtfn call report", body, SORT_JS)


# ----------------------------------------------------------------------------------- a call
def _timeline(view, main_items, width: int = 1000) -> str:
    """The call's segments along time, coloured by their contribution to the main task."""
    segs = view.segments
    t0 = min(s.at for s in segs) if segs else 0.0
    t1 = max(s.at + s.end - s.start for s in segs) if segs else 1.0
    span = max(t1 - t0, 1e-6)
    biggest = max(
        (abs(it.contribution) for it in main_items if math.isfinite(it.contribution)), default=0
    )
    out = [f'<svg viewBox="0 0 {width} 60" width="100%" role=img aria-label="timeline">']
    by_seg = {it.segment: it for it in main_items}
    for k, s in enumerate(segs):
        x = (s.at - t0) / span * width
        w = max(2.0, (s.end - s.start) / span * width - 1)
        c = by_seg.get(k).contribution if k in by_seg else float("nan")
        colour = GREEN if c >= 0 else RED
        alpha = 0.15 + 0.85 * (abs(c) / biggest if biggest and math.isfinite(c) else 0)
        out.append(
            f'<rect x="{x:.1f}" y="6" width="{w:.1f}" height="32" fill="{colour}" '
            f'fill-opacity="{alpha:.2f}"><title>segment {s.index}: {s.start:.1f}–{s.end:.1f} s, '
            f"contribution {_f(c)}</title></rect>"
            f'<text x="{x + 3:.1f}" y="27" font-size="12">{s.index}</text>'
        )
    out.append(f'<text x="0" y="54" font-size="11">{t0:.1f} s</text>')
    out.append(f'<text x="{width}" y="54" font-size="11" text-anchor="end">{t1:.1f} s</text>')
    return "".join(out) + "</svg>"


def _bars(view, main_items, width: int = 1000) -> str:
    """Per segment: its contribution, and beside it the audio and the text contribution."""
    row, half = 26, width / 2
    vals = [
        abs(v)
        for it in main_items
        for v in (it.contribution, it.audio_contribution, it.text_contribution)
        if math.isfinite(v)
    ]
    # the right-hand labels take ~270 px: the bars stay clear of them
    scale = (half - 280) / max(vals) if vals and max(vals) > 0 else 0
    h = row * len(main_items) + 24
    out = [f'<svg viewBox="0 0 {width} {h}" width="100%" role=img aria-label="contributions">']
    out.append(f'<line x1="{half}" y1="0" x2="{half}" y2="{h - 18}" stroke="#889"/>')
    for k, it in enumerate(main_items):
        y = 4 + k * row
        seg = view.segments[it.segment]
        out.append(f'<text x="0" y="{y + 14}" font-size="12">segment {seg.index}</text>')
        for dy, v, colour, what in (
            (0, it.contribution, GREEN if it.contribution >= 0 else RED, "whole segment"),
            (9, it.audio_contribution, BLUE, "audio"),
            (15, it.text_contribution, ORANGE, "text"),
        ):
            if not math.isfinite(v):
                continue
            w = abs(v) * scale
            x = half if v >= 0 else half - w
            hh = 8 if dy == 0 else 5
            out.append(
                f'<rect x="{x:.1f}" y="{y + dy}" width="{max(w, 0.5):.1f}" height="{hh}" '
                f'fill="{colour}"><title>{what}: {_f(v, 4)}</title></rect>'
            )
        out.append(
            f'<text x="{width}" y="{y + 14}" font-size="11" text-anchor="end">'
            f"{_f(it.contribution)} (audio {_f(it.audio_contribution)}, text "
            f"{_f(it.text_contribution)})</text>"
        )
    out.append(
        f'<text x="{half}" y="{h - 4}" font-size="11" text-anchor="middle">0 · right: raised '
        "the predicted class's probability</text>"
    )
    return "".join(out) + "</svg>"


def _marked_text(seg) -> str:
    """The transcript with its strongest words marked (green for, red against the class)."""
    if not seg.words:
        return escape(seg.text)
    strongest = sorted(seg.words, key=lambda w: -abs(w[1]))[:5]
    peak = max((abs(w[1]) for w in strongest), default=0) or 1.0
    # words that move p by less than MARK_AT stay unmarked: a colour would claim what is not there
    marked = {(w[2], w[3]) for w in strongest if abs(w[1]) >= MARK_AT}
    out, at = [], 0
    for word, attr, a, b in seg.words:
        if a < at:  # a phrase overlapping the previous one (a word split across two stretches)
            continue
        out.append(escape(seg.text[at:a]))
        if (a, b) in marked:
            colour = "31,157,85" if attr > 0 else "214,69,69"
            alpha = 0.25 + 0.6 * abs(attr) / peak
            out.append(
                f'<mark style="background:rgba({colour},{alpha:.2f})" title="{attr:+.4f}">'
                f"{escape(word)}</mark>"
            )
        else:
            out.append(escape(word))
        at = b
    return "".join(out) + escape(seg.text[at:])


def _probabilities(predictions: dict, tasks: list[dict]) -> str:
    rows = []
    for t in tasks:
        a = predictions.get(t["name"])
        if not a:
            continue
        if "value" in a:
            rows.append(f"<tr><td>{escape(t['name'])}</td><td>value {a['value']:.3f}</td></tr>")
            continue
        cells = []
        for cls in t["classes"]:
            p = a.get("probs", {}).get(cls)
            if p is None:
                continue
            bold = " style='font-weight:600'" if cls == a.get("label") else ""
            cells.append(
                f"<span{bold}>{escape(cls)} <span class=bar style='width:{60 * p:.0f}px'></span> "
                f"{p:.2f}</span>"
            )
        label = escape(a.get("label", ""))
        rows.append(
            f"<tr><td>{escape(t['name'])}</td><td><b>{label}</b></td><td>{' · '.join(cells)}</td></tr>"
        )
    return "<table class=probs>" + "".join(rows) + "</table>"


def _segment_block(view, k: int, seg, items: list, main: str, top_k: int | None) -> str:
    mine = {it.task: it for it in items if it.segment == k}
    m = mine.get(main)
    head = f"<b>segment {seg.index}</b> · {seg.start:.1f}–{seg.end:.1f} s"
    if m is not None:
        head += (
            f" · contribution {_f(m.contribution)} (audio {_f(m.audio_contribution)}, text "
            f"{_f(m.text_contribution)})"
        )
        if math.isfinite(m.context_contribution):
            nb = view.segments[m.top_neighbour].index if m.top_neighbour >= 0 else "–"
            head += (
                f" · {escape(m.label or '')} {_p(m.probability)} · context "
                f"{_f(m.context_contribution)} · strongest neighbour {nb} "
                f"({_f(m.neighbour_contribution)})"
            )
    parts = [f"<div class='seg{' top' if k == top_k else ''}'>{head}<br>{_marked_text(seg)}"]
    if seg.predictions:  # labels of segments: this utterance's own answer for every task
        parts.append(
            "<br><span class=muted>"
            + " · ".join(
                f"{escape(t)}: {escape(_answer_text(a))}" for t, a in seg.predictions.items()
            )
            + "</span>"
        )
    if seg.spans and view.attributed.get(k):
        strongest = sorted(seg.spans, key=lambda s: -abs(s[2]))[:3]
        parts.append(
            "<br><span class=muted>audio that carried it: "
            + ", ".join(f"{a:.1f}–{b:.1f} s ({x:+.4f})" for a, b, x in strongest)
            + _spread_note(strongest[0][2], m.audio_contribution if m else float("nan"), "voice")
            + "</span>"
        )
    if seg.words and view.attributed.get(k) and m is not None:
        top_word = max(seg.words, key=lambda w: abs(w[1]))[1]
        note = _spread_note(top_word, m.text_contribution, "words")
        if note:
            parts.append(f"<br><span class=muted>{note.removeprefix(' · ')}</span>")
    if seg.clip:
        data = base64.b64encode(seg.clip).decode("ascii")
        parts.append(
            f"<br><audio controls preload=none src='data:audio/flac;base64,{data}'></audio>"
        )
    return "".join(parts) + "</div>"


def _spread_note(strongest: float, whole: float, what: str) -> str:
    """When no single stretch or word moves p much but the modality as a whole does, say so (the
    cue is spread over the segment: removing any one piece leaves the rest to carry it)."""
    if math.isfinite(whole) and abs(whole) >= 0.05 and abs(strongest) < 0.1 * abs(whole):
        return (
            f" · no single {'stretch' if what == 'voice' else 'word'} matters: the {what} "
            f"throughout carries it ({_f(whole)})"
        )
    return ""


def call_page(view, tasks: list[dict], main: str, run: str) -> str:
    main_items = [it for it in view.items if it.task == main]
    finite = [it for it in main_items if math.isfinite(it.contribution)]
    top_k = max(finite, key=lambda it: abs(it.contribution)).segment if finite else None
    label = next((it.label for it in main_items), None)
    prob = next((it.probability for it in main_items), None)
    segment_level = any(math.isfinite(it.context_contribution) for it in main_items)
    what = (
        "each scored utterance's own prediction; its contribution is its probability minus the "
        "class's training frequency"
        if segment_level
        else f"predicted <b>{escape(label or '')}</b> ({_p(prob)}) on task {escape(main)}; a "
        "segment's contribution is the probability minus the probability with the segment left out"
    )
    body = [
        f"<p><a href='../index.html'>← all calls</a></p><h1>{escape(view.call_id)}</h1>",
        f"<div class=muted>{escape(view.source)} · run {escape(run)} · {escape(view.status)}</div>",
        f"<p>{what}.</p>",
        "<h2>Timeline</h2>",
        _timeline(view, main_items),
        "<h2>Contributions</h2><div class=legend>",
        f"<span style='background:{GREEN}'></span>raised <span style='background:{RED}'></span>"
        f"lowered <span style='background:{BLUE}'></span>audio <span style='background:{ORANGE}'>"
        "</span>text (the modality replaced by the training mean frame)</div>",
        _bars(view, main_items),
    ]
    if view.predictions:
        body += ["<h2>Every task</h2>", _probabilities(view.predictions, tasks)]
    body.append("<h2>Transcript</h2>")
    for k, seg in enumerate(view.segments):
        body.append(_segment_block(view, k, seg, view.items, main, top_k))
    return _page(f"{view.call_id} · msmtfn", "".join(body))
