"""gchat in the browser: the web listener (HTTP for the app's static files,
WebSocket for the chat) and the WebSocket transport under the same
`server.Connection` as TCP (docs/protocol.md, "WebSocket")."""
