"""The bot's Slack side, outbound: the incident thread as a view of the stored timeline (timeline.py), Block
Kit (blocks.py), every message's wording (wording.py), the SLO chart (chart.py), and SlackOut (slack_out.py),
through which every outbound Slack call goes (metrics, retries, redaction). Inbound Slack is handlers/.
"""
