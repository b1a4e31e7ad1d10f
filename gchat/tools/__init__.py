"""Programs apart from the node: gchat-admin, the nginx config renderer and
gchat-bench. They use the node's modules; the node imports nothing from here."""
