"""Local sandbox parts shared by the demo and the tests: fake Slack Web API, model service simulator,
server launchers."""
