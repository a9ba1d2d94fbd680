"""The report a person reads: the plain-text summary, the self-contained HTML page (plot, rule table, provenance,
cost), the DataFrame and the saved files. Results are built directly from their fields, plus one real compile in
the simulated world (scripted student and teacher engines, named as such)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation, RuleSet
from dspy_concept_distill.records import BatchReply, TrajectoryStep
from dspy_concept_distill.reporting.result import DistillationResult
from dspy_concept_distill.rules import Rule, RuleStatus
from dspy_concept_distill.runtime.ledger import Ledger
from dspy_concept_distill.testing import SimulatedWorld
from dspy_concept_distill.tracking import summary_metrics
from tests.reporting.results import make_result


class _TagChecker(HTMLParser):
    VOID = frozenset({"meta", "br", "col", "hr", "img", "input", "link", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _svg(page: str) -> ET.Element:
    match = re.search(r"<svg.*?</svg>", page, re.S)
    assert match, "no inline SVG plot"
    return ET.fromstring(match.group(0))


def _section(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}</h2>")
    end = page.find("<h2>", start + 4)
    return page[start:] if end < 0 else page[start:end]


# -- the HTML page -------------------------------------------------------------------------------------------------
def test_html_is_one_self_contained_well_formed_page():
    page = make_result().to_html()
    assert page.startswith("<!DOCTYPE html>")
    for asset in ("<script", "<link", "<img", "<iframe", "src=", "url(", "@import"):
        assert asset not in page.lower(), asset
    assert not re.search(r"href\s*=\s*[\"']?(https?:|//)", page)
    checker = _TagChecker()
    checker.feed(page)
    assert checker.errors == [] and checker.stack == []
    _svg(page)  # the plot is well-formed XML


def test_html_escapes_all_text_and_clips_teacher_text():
    page = make_result().to_html()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>units</b>" not in page and "&lt;b&gt;units&lt;/b&gt;" in page
    assert "x" * 41 not in page  # the 500-character predictor name, in the table, provenance and reasons
    assert "garbage " * 80 not in page and "garbage garbage" in page  # the diagnosis is clipped, not dropped
    assert "long " * 100 not in page and "Q1 long" in page  # a long student input is clipped


def test_plot_draws_every_step_with_its_gain_and_confidence_interval():
    svg = _svg(make_result().to_html())
    points = [float(c.get("cy")) for c in svg.iter("circle")]
    assert len(points) == 3 and points[0] > points[1] > points[2]  # 0.5 -> 0.7 -> 0.8: higher is up
    assert len([r for r in svg.iter("rect") if r.get("class") == "gain"]) == 2
    whiskers = [g for g in svg.iter("g") if g.get("class") == "ci"]
    assert len(whiskers) == 2
    # the second rule's CI is of its gain over the first rule's score 0.7: 0.7 + [-0.02, 0.22] = [0.68, 0.92]
    stem = next(whiskers[1].iter("line"))
    low_end, high_end = float(stem.get("y1")), float(stem.get("y2"))
    assert low_end > points[1] and high_end < points[2]
    labels = {t.text for t in svg.iter("text")}
    assert {"+0.200", "+0.100", "baseline", "+R1", "+R2"} <= labels


def test_plot_stops_a_whisker_at_the_top_of_a_0_1_score():
    trajectory = [TrajectoryStep(0, 0.9), TrajectoryStep(1, 1.0, text="r", gain=0.1, ci=(0.02, 0.3))]
    svg = _svg(make_result(trajectory=trajectory).to_html())
    top = float(next(c for c in svg.iter("circle") if c.get("cy")).get("cy"))
    cy = [float(c.get("cy")) for c in svg.iter("circle")]
    stem, *caps = list(next(g for g in svg.iter("g") if g.get("class") == "ci").iter("line"))
    assert float(stem.get("y2")) == pytest.approx(min(cy))  # drawn up to 1.0, not to 1.2
    assert len(caps) == 1 and top > min(cy)  # the open (clipped) end has no cap


def test_plot_tick_labels_sit_where_their_values_are():
    trajectory = [TrajectoryStep(0, 0.25), TrajectoryStep(1, 0.26, text="r", gain=0.01)]
    svg = _svg(make_result(trajectory=trajectory).to_html())
    ticks = [(float(t.text), float(t.get("y"))) for t in svg.iter("text")
             if t.get("class") == "tick" and re.fullmatch(r"-?[0-9.]+", t.text or "")]
    assert len(ticks) >= 3
    (v0, y0), (v1, y1) = ticks[0], ticks[1]
    for value, y in ticks:  # every label is the value at its height (no 0.225 printed as 0.23)
        assert y == pytest.approx(y0 + (value - v0) * (y1 - y0) / (v1 - v0), abs=0.5)


def test_no_plot_when_no_rule_was_kept():
    result = make_result(ruleset=RuleSet(), final_score=0.5,
                         trajectory=[TrajectoryStep(0, 0.5)])
    page = result.to_html()
    assert "<svg" not in page and "No rule was kept: the valset score stayed at the baseline, 0.500" in page


def _table_rows(page: str) -> list[str]:
    return re.findall(r"<tr[^>]*>.*?</tr>", _section(page, "Rules"), re.S)[1:]


def test_rule_table_lists_kept_rules_first_with_their_evidence():
    page = make_result().to_html()
    rows = _table_rows(page)
    assert len(rows) == 4
    assert "R1" in rows[0] and "Convert every quantity" in rows[0] and 'class="kept"' in rows[0]
    assert "R2" in rows[1] and "Subtract what was given away" in rows[1]
    assert "kept" not in re.sub(r'class="kept"', "", rows[2]) and "dropped" in rows[2]
    assert "95% CI +0.050 to +0.350" in rows[0] and "95% CI -0.020 to +0.220" in rows[1]
    assert "student ignores it" in rows[1] and "student ignores it" not in rows[0]
    assert "adds nothing once the others are in" in rows[1] and "still needed" in rows[0]
    assert ">1</td>" in rows[0] and ">2</td>" in rows[1]  # rounds as people count them (stored 0 and 1)


def test_provenance_shows_each_source_mistake_with_its_own_diagnosis():
    result = make_result()
    page = result.to_html()
    units = result.ruleset.rules[0]
    block = re.search(rf'<details id="rule-{units.id}">.*?</details>', page, re.S).group(0)
    mistakes = re.findall(r'<div class="mistake">.*?</div>', block, re.S)
    assert len(mistakes) == 2
    first, second = mistakes  # source_mistakes order: 0-a then 0-b; the teacher's reply listed 0-b first
    assert "0-a" in first and "diag A" in first and "diag B" not in first
    assert "0-b" in second and "diag B" in second
    assert "105" in first and "112" in first  # gold and the student's output
    assert "raised the valset score by +0.200" in block and "merged" not in block
    assert len(re.findall(r"<details ", page)) == len(result.rules)


def test_cost_section_shows_spend_against_budget_with_cache_hits_apart():
    page = make_result().to_html()
    cost = _section(page, "Cost")
    rows = re.findall(r"<tr>.*?</tr>", cost, re.S)
    student = next(r for r in rows if "student calls" in r)
    assert ">3</td>" in student and ">100</td>" in student and "3%" in student and "1 cache hits" in student
    usd = next(r for r in rows if "USD" in r)
    assert "$1.0000" in usd and re.search(r"\$0\.\d{4}", usd)
    assert "$0.0010 to $0.0100" in cost
    assert "openai/gpt-4o-mini" in cost and "induction" in cost


# -- the plain-text summary ---------------------------------------------------------------------------------------
def test_summary_numbers_rounds_from_one_and_clips_teacher_text():
    result = make_result()
    text = result.summary()
    assert "round 0" not in text and "round 1" in text and "round 2" in text
    assert "x" * 41 not in text
    assert max(len(line) for line in text.splitlines()) < 400
    assert "R2 [solve] Subtract what was given away before answering." in text
    assert "student ignores it" in text and "adds nothing once the others are in" in text
    assert list(result.report()["round"]) == [1, 2, 1, 2]  # kept rules first, then the rejected ones by round
    assert [r.round for r in result.rules] == [1, 0, 0, 1]  # stored from 0, unchanged


def test_summary_shows_spend_against_each_budget():
    text = make_result().summary()
    assert "student calls: 3 of 100 (3%); 1 cache hits (free)" in text
    assert "teacher calls: 1 of 10 (10%)" in text
    assert "tokens (all LMs): 5,650 (no limit)" in text
    assert re.search(r"USD \(all LMs\): \$0\.\d{4} of \$1\.0000 \(\d+%\)", text)
    assert "projected before the run: $0.0010 to $0.0100" in text
    assert "nothing learned" not in text
    verify = make_result(usage=Ledger(), budgets={"student_calls": 10, "teacher_calls": 0}).summary()
    assert "teacher calls: 0 of 0 (none allowed)" in verify and "tokens (all LMs): 0 (no limit)" in verify


def test_summary_says_why_nothing_was_learned():
    no_mistakes = make_result(ruleset=RuleSet(), rules=[], mistakes=[], replies=[], final_score=0.5)
    assert "nothing learned: the student made no mistakes" in no_mistakes.summary()

    failed = [BatchReply(round=0, batch=i, mistake_ids=["0-a"], error="the teacher reply did not parse " + "z" * 400)
              for i in range(2)]
    no_reply = make_result(ruleset=RuleSet(), rules=[], replies=failed, final_score=0.5,
                           stopped="teacher call budget of 4 is used up")
    text = no_reply.summary()
    assert "nothing learned: the teacher gave no usable reply (2 of 2 batches failed" in text
    assert "z" * 200 not in text and "the run stopped: teacher call budget" in text

    rejected = [Rule(f"Rule number {w} for the task.", "solve", status=RuleStatus.REJECTED, round=0,
                     reason=f"gain {-g:+.3f} on the valset is below min_gain 0.05")
                for w, g in (("one", 0.05), ("two", 0.1), ("three", 0.0))]
    rejected.append(Rule("Rule four for the task.", "solve", status=RuleStatus.REJECTED,
                         reason=f"near-duplicate of candidate {rejected[0].id}, merged into it"))
    all_rejected = make_result(ruleset=RuleSet(), rules=rejected, final_score=0.5)
    assert ("every one of the 4 candidate rules was rejected; most often (3 of 4): gain -0.050 on the valset is "
            "below min_gain 0.05") in all_rejected.summary()
    assert "nothing learned" not in make_result().summary()
    assert make_result().why_nothing_learned() is None


def test_summary_says_when_accepted_rules_were_not_returned():
    result = make_result(ruleset=RuleSet(), final_score=0.5)
    assert "the final check could not show that they beat the original instructions" in result.summary()
    assert "accepted, not returned" in result.to_html()


# -- data and files ------------------------------------------------------------------------------------------------
def test_save_writes_the_page_the_rules_and_the_data(tmp_path):
    result = make_result()
    paths = result.save(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.html", "result.json", "rules.json",
                                                                    "rules.md"]
    assert paths["report.html"].read_text(encoding="utf-8") == result.to_html()
    assert RuleSet.from_json(paths["rules.json"]) == result.ruleset
    assert RuleSet.from_markdown(paths["rules.md"]) == result.ruleset
    data = json.loads(paths["result.json"].read_text(encoding="utf-8"))
    assert data["kept_rule_ids"] == [r.id for r in result.ruleset]
    assert [s["score"] for s in data["trajectory"]] == [0.5, 0.7, 0.8]
    assert data["budgets"]["student_calls"] == 100 and data["rounds"][1]["round"] == 2
    assert data["mistakes"][0]["gold"] == {"answer": 105} and data["replies"][0]["diagnoses"][0] == "diag B"


def test_report_of_a_real_compile_in_the_simulated_world(world):
    train, val = world.split(20, 20)
    dspy.configure(lm=world.student_lm())
    result = ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), num_threads=4).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val).distillation
    page = result.to_html()
    kept = len(result.ruleset)
    assert kept >= 1
    assert len([c for c in _svg(page).iter("circle")]) == kept + 1
    assert len(_table_rows(page)) == len(result.rules)
    for rule in result.ruleset:
        block = re.search(rf'<details id="rule-{rule.id}">.*?</details>', page, re.S).group(0)
        assert "s diagnosis:</b>" in block and "the student missed the" in block
    assert "round 0" not in result.summary()


def _reproposed() -> DistillationResult:
    """``make_result`` where the kept 'units' rule is proposed again in round 2 and rejected as already in force:
    a later record with the same id, which must not take the kept record's place."""
    result = make_result()
    units = result.ruleset.rules[0]
    again = Rule(units.text, units.predictor, source_mistakes=["1-c"], status=RuleStatus.REJECTED, round=1, batch=0,
                 reason=f"near-duplicate of rule {units.id} (in force)")
    return make_result(rules=[*result.rules, again])


def test_a_kept_rule_proposed_again_later_keeps_its_accepted_record_everywhere():
    result = _reproposed()
    units = result.ruleset.rules[0]
    summary = result.summary()
    kept_line = next(line for line in summary.splitlines() if "R1 [solve]" in line)
    assert "round 1" in kept_line and "gain +0.200" in kept_line and "not measured" not in kept_line
    assert "proposed again in round 2" in kept_line
    assert f"near-duplicate of rule {units.id}" not in summary  # not listed among the rejected rules either
    assert units.id not in {r.id for r in result.rejected_rules}
    frame = result.report()
    rows = frame[frame["id"] == units.id]
    assert len(rows) == 1 and rows.iloc[0]["status"] == RuleStatus.ACCEPTED and bool(rows.iloc[0]["kept"])
    assert rows.iloc[0]["gain"] == pytest.approx(0.2)
    rows = _table_rows(result.to_html())
    assert len(rows) == len(make_result().rules)  # one row per rule: the later proposal adds none
    assert summary_metrics(result)["rules_rejected"] == len(make_result().rejected_rules)


def test_a_medium_run_keeps_the_accepted_records_of_its_kept_rules():
    world = SimulatedWorld(flip_rate=0.1, seed=1)  # flips leave mistakes of every kind for round 2
    train, val = world.split(20, 20)
    dspy.configure(lm=world.student_lm())
    result = ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), auto="medium",
                                 num_threads=2).compile(dspy.ChainOfThought("question -> answer: float"),
                                                        trainset=train, valset=val).distillation
    records = {r.id: [x for x in result.rules if x.id == r.id] for r in result.ruleset}
    assert any(len(found) > 1 for found in records.values())  # a kept rule was proposed again in round 2
    frame = result.report()
    for rule in result.ruleset:
        row = frame[frame["id"] == rule.id]
        assert len(row) == 1 and row.iloc[0]["status"] == RuleStatus.ACCEPTED and bool(row.iloc[0]["kept"])
