"""The sandbox's chat page: a Slack-like channel in the browser for `rollback-bot demo`.

`server.ChatPage` serves the page (index.html, app.js, style.css in this folder, shipped as package data)
and plays Slack's side for it. Called by sandbox.demo and the tests.
"""

from sandbox.chat.server import ChatPage

__all__ = ["ChatPage"]
