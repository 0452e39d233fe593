"""The chaos suite: kill -9s, churn, broker bounces, backlogs, duplicates and poison
against a real broker, every customer compared with ``loyalty replay``.

``make chaos`` runs the full profile (``python -m tests.chaos``); CI runs the
short one through pytest (``tests/chaos/test_chaos.py``). Scenarios share the
service harness of the integration tests (tests/integration/service_harness.py).
"""
