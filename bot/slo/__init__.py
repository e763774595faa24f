"""SLOs: the policy model and its errors (policy.py, durations.py), evaluation with grouped PromQL
(evaluation.py), multiwindow burn rate (burn.py), Prometheus alert rules (rules.py), and the promotion gate with
the freeze (gate.py). Knows nothing of incidents or Slack.
"""
