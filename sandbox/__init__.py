"""The sandbox: `rollback-bot demo` and the parts the tests share — a fake Slack Web API, a fake Kubernetes API,
the model-service simulator, server launchers, request signing and the demo's chat page. Installed with the bot
(it is how people first try it); the bot itself never imports it, except bot.cli's `demo` command."""
