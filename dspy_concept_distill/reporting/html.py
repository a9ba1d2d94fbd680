"""The HTML report: one self-contained page (inline CSS and SVG, no script, no external asset).

Sections: the headline, the score plot, the rule table, each rule's provenance (the mistakes it came from, the
teacher's diagnosis of each, why it was kept or dropped), the teacher batches, and spend against budget. All text
is escaped; text a teacher wrote is clipped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from ..records import Mistake
from ..rules import Rule
from ..text import fmt_score
from .plot import trajectory_svg
from .text import (
    REASON_CHARS,
    ablation_note,
    adherence_note,
    budget_rows,
    display_round,
    estimate_line,
    fmt_amount,
    fmt_ci,
    fmt_gain,
    fmt_share,
    headline,
    inherited_note,
    kept_rules,
    ordered_rules,
    predictor_label,
    round_label,
    rule_gain,
    status_word,
    tidy,
    why_nothing_learned,
)
from .view import ResultView

TABLE_RULE_CHARS = 400  # a rule text in the table (longer texts were rejected as too long)
DIAGNOSIS_CHARS = 600
FIELD_CHARS = 400  # one input, gold or output value of a mistake
MAX_MISTAKES_SHOWN = 5  # source mistakes shown per rule
RULE_TABLE_COLUMNS = {"#": 4, "round": 5, "predictor": 10, "rule": 24, "status": 8, "gain": 10, "valset examples": 8,
                      "evidence": 15, "reason": 16}  # column -> width in % of the table

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;margin:0;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.headline{font-size:22px;margin:8px 0 2px}.headline b{font-size:26px}.sub{color:#5a6474;margin:0 0 8px}
.banner{padding:8px 12px;border-radius:6px;margin:8px 0}.stopped{background:#fff4e0;border:1px solid #f0c36d}
.nothing{background:#fdecec;border:1px solid #e9a3a3}
table{border-collapse:collapse;width:100%;font-size:13.5px}th,td{border:1px solid #dde2ea;padding:5px 7px;
text-align:left;vertical-align:top}th{background:#eef1f5}td.num{text-align:right;white-space:nowrap}
tr.kept td{background:#f1faf3}.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;
white-space:nowrap}.kept .badge.status{background:#2e7d32;color:#fff}.badge.status{background:#8a93a3;color:#fff}
.flag{background:#fbe3c2;color:#7a4200;margin:1px 0}.small{color:#5a6474;font-size:12.5px}
details{border:1px solid #dde2ea;border-radius:6px;margin:6px 0;padding:4px 10px}summary{cursor:pointer;padding:2px 0}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace}
.mistake{border-left:3px solid #c9d1dd;padding:2px 10px;margin:8px 0}.mistake table{table-layout:fixed}
.mistake th{width:150px}.mistake td.field{width:120px}.diag{background:#f3f0fb;padding:4px 8px;
border-radius:4px}svg.plot{max-width:100%;height:auto;background:#fff}
.grid{stroke:#e3e7ee}.baseline{stroke:#8a93a3;stroke-dasharray:5 4}.path{fill:none;stroke:#2563eb;stroke-width:2}
.point{fill:#2563eb}.gain{fill:#86efac;opacity:.75}.ci line{stroke:#166534;stroke-width:1.6}
.tick,.note,.label{font-size:12px;fill:#4b5563}.axis{font-size:13px;fill:#1d2430}.label{fill:#166534}
.bar{display:block;height:9px;background:#93c5fd}
.barbox{display:inline-block;width:120px;height:9px;background:#eef1f5;vertical-align:middle}
ol.legend li{margin:2px 0}table.compact{width:auto;min-width:50%}
a{color:inherit;text-decoration:none}a:hover{text-decoration:underline}
table.rules{table-layout:fixed}td.num .small{white-space:normal}td{overflow-wrap:anywhere}
.badge.flag{white-space:normal}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _block(value: Any, limit: int = FIELD_CHARS) -> str:
    """A field value of a mistake, line breaks kept, clipped, escaped, in a <pre>."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = text.strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + f" […] ({len(text):,} characters)"
    return f"<pre>{_e(text)}</pre>"


def _numbers(result: ResultView) -> dict[str, int]:
    return {r.id: i for i, r in enumerate(kept_rules(result), 1)}


def _head(result: ResultView) -> str:
    parts = ["<h1>Concept Distillation report</h1>"]
    base, final = fmt_score(result.baseline_score), fmt_score(result.final_score)
    change = ""
    if result.baseline_score is not None and result.final_score is not None:
        change = f" ({result.final_score - result.baseline_score:+.3f})"
    kept = len(result.ruleset)
    parts.append(f'<p class="headline">valset score <b>{base}</b> &rarr; <b>{final}</b>{_e(change)} with '
                 f"<b>{kept}</b> rule{'s' if kept != 1 else ''} kept of {len(result.rules)} candidate(s)</p>")
    parts.append(f'<p class="sub">{result.valset_size} validation / {result.trainset_size} training examples, '
                 f"min_gain {result.min_gain:g}, {len(result.rounds)} round(s), {len(result.mistakes)} mistake(s) "
                 f"shown to the teacher in {len(result.replies)} batch(es)</p>")
    if result.stopped:
        parts.append(f'<p class="banner stopped"><b>Stopped early:</b> {_e(tidy(result.stopped, 300))}</p>')
    if (why := why_nothing_learned(result)) is not None:
        parts.append(f'<p class="banner nothing"><b>Nothing learned:</b> {_e(why)}</p>')
    return "".join(parts)


def _plot(result: ResultView) -> str:
    svg = trajectory_svg(result.trajectory)
    if not svg:
        if result.baseline_score is None:
            return "<h2>Score as rules are added</h2><p>No valset score was measured, so there is nothing to plot.</p>"
        return (f"<h2>Score as rules are added</h2><p>No rule was kept: the valset score stayed at the baseline, "
                f"{fmt_score(result.baseline_score)}.</p>")
    items = []
    for step in result.trajectory[1:]:
        ci = fmt_ci(step.ci)
        items.append(f"<li><b>R{step.rules}</b> {_e(tidy(step.text or '', 160))} "
                     f'<span class="small">score {fmt_score(step.score)}, gain {fmt_gain(step.gain)}'
                     f"{_e(', ' + ci) if ci else ''}</span></li>")
    missing = len(result.ruleset) - (len(result.trajectory) - 1)
    note = (f'<p class="small">{missing} kept rule(s) are not plotted: their prefix was not scored on the whole '
            "valset.</p>") if missing > 0 else ""
    return ("<h2>Score as rules are added</h2>"
            '<p class="small">Each bar is a kept rule\'s gain over the rules before it; the whisker is the paired '
            "95% confidence interval of that gain on the valset.</p>"
            f"{svg}{note}" + (f'<ol class="legend">{"".join(items)}</ol>' if items else ""))


def _flag_cell(rule: Rule, min_gain: float) -> str:
    notes = []
    for note in (adherence_note(rule), ablation_note(rule, min_gain)):
        if note:
            warn = note.startswith(("student ignores", "adds nothing", "adds less"))
            notes.append(f'<span class="badge flag">{_e(note)}</span>' if warn else f'<span class="small">{_e(note)}'
                         "</span>")
    return "<br>".join(notes)


def _rule_row(rule: Rule, number: int | None, kept_ids: set[str], min_gain: float) -> str:
    ci = fmt_ci(rule.gain_ci)
    cells = [
        f"R{number}" if number else "", str(display_round(rule.round)) if rule.inherited is None else "inherited",
        _e(predictor_label(rule.predictor)),
        f'<a href="#rule-{_e(rule.id)}">{_e(tidy(rule.text, TABLE_RULE_CHARS))}</a>',
        f'<span class="badge status">{_e(status_word(rule, kept_ids))}</span>',
    ]
    gain = f"{_e(rule_gain(rule))}" + (f'<br><span class="small">{_e(ci)}</span>' if ci else "")
    tail = [gain, str(rule.evaluated_on or ""), _flag_cell(rule, min_gain), _e(tidy(rule.reason, REASON_CHARS))]
    css = ' class="kept"' if rule.id in kept_ids else ""
    return (f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + f'<td class="num">{tail[0]}</td>'
            f'<td class="num">{tail[1]}</td><td>{tail[2]}</td><td>{tail[3]}</td></tr>')


def _rules(result: ResultView) -> str:
    if not result.rules:
        return "<h2>Rules</h2><p>The teacher proposed no rules.</p>"
    numbers, kept_ids = _numbers(result), {r.id for r in result.ruleset}
    head = "".join(f"<th>{h}</th>" for h in RULE_TABLE_COLUMNS)
    cols = "".join(f'<col style="width:{w}%">' for w in RULE_TABLE_COLUMNS.values())
    rows = "".join(_rule_row(r, numbers.get(r.id), kept_ids, result.min_gain) for r in ordered_rules(result))
    return (f"<h2>Rules</h2><table class='rules'><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def diagnoses(result: ResultView) -> dict[tuple[int | None, int | None, str], str]:
    """The teacher's diagnosis of each mistake, keyed by (round, batch, mistake id) and by (None, None, id)."""
    out: dict[tuple[int | None, int | None, str], str] = {}
    for reply in result.replies:
        for i, mistake_id in enumerate(reply.mistake_ids):
            if i < len(reply.diagnoses) and str(reply.diagnoses[i]).strip():
                out.setdefault((reply.round, reply.batch, mistake_id), str(reply.diagnoses[i]))
                out.setdefault((None, None, mistake_id), str(reply.diagnoses[i]))
    return out


def _mistake(mistake: Mistake | None, mistake_id: str, diagnosis: str | None) -> str:
    if mistake is None:
        return f'<div class="mistake"><b>Mistake {_e(mistake_id)}</b> <span class="small">(not recorded)</span></div>'
    rows = [("input", k, v) for k, v in mistake.inputs.items()] + [("gold", k, v) for k, v in mistake.gold.items()]
    for step in mistake.steps:
        rows += [(f"student [{predictor_label(step.predictor)}]", k, v) for k, v in step.outputs.items()]
    if mistake.error:
        rows.append(("error", str(mistake.error_kind or ""), mistake.error))
    if mistake.raw_text:
        rows.append(("raw reply", "", mistake.raw_text))
    if mistake.feedback:
        rows.append(("metric feedback", "", mistake.feedback))
    table = "".join(f"<tr><th>{_e(kind)}</th><td class='field'>{_e(tidy(name, 40))}</td>"
                    f"<td>{_block(value)}</td></tr>" for kind, name, value in rows)
    diag = (f'<p class="diag"><b>Teacher\'s diagnosis:</b> {_e(tidy(diagnosis, DIAGNOSIS_CHARS))}</p>'
            if diagnosis else '<p class="small">No diagnosis from the teacher for this mistake.</p>')
    return (f'<div class="mistake"><b>Mistake {_e(mistake_id)}</b> <span class="small">(round '
            f"{display_round(mistake.round)}, score {mistake.score:g})</span><table>{table}</table>{diag}</div>")


def _why(rule: Rule, result: ResultView, kept_ids: set[str]) -> str:
    lines = [f"<b>{_e(status_word(rule, kept_ids).capitalize())}:</b> {_e(tidy(rule.reason, 600))}"]
    if rule.gain is not None:
        ci = fmt_ci(rule.gain_ci)
        lines.append(f"gain {_e(fmt_gain(rule.gain))}{_e(', ' + ci) if ci else ''} on {rule.evaluated_on} valset "
                     f"example(s), measured in {rule.attempts} round(s)")
    lines += [_e(n) for n in (adherence_note(rule), ablation_note(rule, result.min_gain)) if n]
    if rule.duplicates:
        merged = "; ".join(tidy(d, 120) for d in rule.duplicates)
        lines.append(f"merged near-duplicates ({len(rule.duplicates)}): {_e(merged)}")
    return "<p>" + "<br>".join(lines) + "</p>"


def _provenance_item(rule: Rule, result: ResultView, context: dict[str, Any]) -> str:
    number = context["numbers"].get(rule.id)
    label = f"R{number} " if number else ""
    head = (f"{label}[{predictor_label(rule.predictor)}] {tidy(rule.text, 140)} "
            f"({status_word(rule, context['kept_ids'])}, {round_label(rule)}"
            f"{'' if rule.batch is None else f', teacher batch {rule.batch + 1}'})")
    shown = rule.source_mistakes[:MAX_MISTAKES_SHOWN]
    blocks = [_mistake(context["mistakes"].get(m), m, context["diagnoses"].get((rule.round, rule.batch, m))
                       or context["diagnoses"].get((None, None, m))) for m in shown]
    more = len(rule.source_mistakes) - len(shown)
    if more > 0:
        blocks.append(f'<p class="small">and {more} more source mistake(s)</p>')
    if rule.inherited is not None:
        blocks.append(f'<p class="small">{_e(inherited_note(rule))}.</p>')
    elif not shown:
        blocks.append('<p class="small">No source mistakes recorded for this rule.</p>')
    return (f'<details id="rule-{_e(rule.id)}"><summary>{_e(head)}</summary>{_why(rule, result, context["kept_ids"])}'
            f"<p><b>Written from {len(rule.source_mistakes)} mistake(s):</b></p>{''.join(blocks)}</details>")


def _provenance(result: ResultView) -> str:
    if not result.rules:
        return ""
    context = {"numbers": _numbers(result), "kept_ids": {r.id for r in result.ruleset},
               "mistakes": {m.id: m for m in result.mistakes}, "diagnoses": diagnoses(result)}
    items = "".join(_provenance_item(r, result, context) for r in ordered_rules(result))
    return ("<h2>Where each rule came from</h2><p class=\"small\">Open a rule to see the mistakes it was written "
            f"for, the teacher's diagnosis of each, and why it was kept or dropped.</p>{items}")


def _batches(result: ResultView) -> str:
    if not result.replies:
        return ""
    rows = []
    for reply in result.replies:
        status = f"failed: {tidy(reply.error, 240)}" if reply.error else f"{len(reply.rules)} rule(s) proposed"
        rows.append(f"<tr><td>{display_round(reply.round)}</td><td>{reply.batch + 1}</td>"
                    f'<td class="num">{len(reply.mistake_ids)}</td><td class="num">{reply.attempts}</td>'
                    f"<td>{_e(status)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("round", "batch", "mistakes", "attempts", "outcome"))
    return (f"<h2>Teacher batches</h2><table class='compact'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _budget_table(result: ResultView) -> str:
    rows = []
    for row in budget_rows(result):
        usd = row["what"].startswith("USD")
        used, limit = row["used"], row["limit"]
        width = 0 if not limit or used is None else min(120, round(120 * used / limit))
        bar = f'<span class="barbox"><span class="bar" style="width:{width}px"></span></span>' if limit else ""
        extra = f"{row['cache_hits']:,} cache hits (free)" if "cache_hits" in row else ""
        share = "" if limit is None else f"{bar} {_e(fmt_share(used, limit))}"
        rows.append(f"<tr><td>{_e(row['what'])}</td><td class=\"num\">{_e(fmt_amount(used, usd=usd))}</td>"
                    f"<td class=\"num\">{_e('no limit' if limit is None else fmt_amount(limit, usd=usd))}</td>"
                    f"<td>{share}</td><td>{_e(extra)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("budget", "used", "limit", "share", "not counted"))
    return f'<table class="compact"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _cost(result: ResultView) -> str:
    rows = []
    for row in result.usage.rows():
        cost = "n/a" if row.cost is None else f"${row.cost:,.4f}"
        rows.append(f"<tr><td>{_e(row.role)}</td><td>{_e(row.phase)}</td><td>{_e(tidy(row.model, 60))}</td>"
                    + "".join(f'<td class="num">{v:,}</td>' for v in (row.calls, row.cache_hits, row.input_tokens,
                                                                      row.output_tokens))
                    + f'<td class="num">{cost}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("role", "phase", "model", "calls", "cache hits", "input tokens",
                                             "output tokens", "USD"))
    usage = (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>" if rows
             else "<p>No LM call was made.</p>")
    return (f"<h2>Cost</h2>{_budget_table(result)}<p class=\"small\">{_e(estimate_line(result.cost_estimate))}. "
            "Cache hits cost nothing and do not count against a budget.</p>"
            f"<h3>Per role, phase and model</h3>{usage}")


def render(result: ResultView) -> str:
    title = _e(f"Concept Distillation: {headline(result)}")
    body = "".join((_head(result), _plot(result), _rules(result), _provenance(result), _batches(result),
                    _cost(result)))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{title}</title><style>{CSS}</style></head>'
            f"<body><main>{body}</main></body></html>")


FRAGMENT_CLASS = "cd-report"


def _scoped(css: str, scope: str) -> str:
    """``css`` with every selector inside ``scope`` (``body`` becomes the scope itself), so a report shown inside a
    notebook's page styles nothing but itself."""
    rules = []
    for block in css.split("}"):
        if "{" not in block:
            continue
        selectors, body = block.split("{", 1)
        scoped = [scope if s.strip() == "body" else f"{scope} {s.strip()}" for s in selectors.split(",") if s.strip()]
        rules.append(f"{','.join(scoped)}{{{body.strip()}}}")
    return "\n".join(rules)


def render_fragment(result: ResultView) -> str:
    """The report as one ``<div>`` for a notebook (``DistillationResult._repr_html_``): the page's sections, its style
    scoped to the div."""
    body = "".join((_head(result), _plot(result), _rules(result), _provenance(result), _batches(result),
                    _cost(result)))
    return (f'<div class="{FRAGMENT_CLASS}"><style>{_scoped(CSS, "." + FRAGMENT_CLASS)}</style>'
            f"<main>{body}</main></div>")
