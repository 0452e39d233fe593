"""deploy/prometheus/alerts.yml checked and unit-tested by the real promtool.

promtool comes with Debian's ``prometheus`` package (``.ci/run`` installs it
when it is missing). These tests are marked ``integration``: on a developer
machine without promtool they are skipped with that reason; in CI
(``CI_FORBID_INTEGRATION_SKIPS=1``) a skip is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
pytestmark = pytest.mark.integration


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def test_rules_are_valid() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(RULES / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_rule_unit_tests_pass() -> None:
    done = subprocess.run([_promtool(), "test", "rules", str(RULES / "alerts_test.yml")],
                          capture_output=True, text=True, timeout=60, cwd=RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((RULES / "alerts_test.yml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]
             if t["exp_alerts"]}
    assert alerts == fired == {"LoyaltyConsumerLagGrowing", "LoyaltyWorkerNotReady",
                               "LoyaltyWorkerDown", "LoyaltyDeadLettersRising",
                               "LoyaltyNoEventsProcessed", "LoyaltyEventLoopStalls",
                               "LoyaltyUpgradeUnfinished"}
