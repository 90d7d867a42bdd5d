"""JUnit XML for CI systems: one test case per gate rule."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from harness.comparison.gate import RuleOutcome


def render_junit(outcomes: Sequence[RuleOutcome]) -> str:
    failures = sum(not o.passed for o in outcomes)
    suite = ET.Element("testsuite", name="harness-gate", tests=str(len(outcomes)), failures=str(failures), errors="0")
    for outcome in outcomes:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{outcome.rule.task}", name=outcome.rule.metric)
        if outcome.passed:
            ET.SubElement(case, "system-out").text = outcome.detail
        else:
            ET.SubElement(case, "failure", message=outcome.detail, type="regression").text = outcome.detail
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
