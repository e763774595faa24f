"""The centre: an incident's state machine (states.py: the diagram and the transition table) and everything
that moves an incident through it.

- service.IncidentService — the front door: open, request, approve (press_approve for the typed confirm),
  dismiss, stop, retry, dry run; asks the one rule in authorization.py at each click;
- detection.Detection — the evaluation cycle, where a detected alert is born; alerts.Intake — Alertmanager's;
- planning.Planner — the Baseline pinned at open, `--to`, shared dry-run plans;
- runs.Runs — plan runs (runner.Runner, step by step), halts, verification (verify.py), the close (close.py);
- recovery.Recovery — restart pick-up; oncall.OnCall — status, history, freeze, unfreeze, policy.

Each gets its collaborators from bot.app.wire; none receives the whole bot.
"""
