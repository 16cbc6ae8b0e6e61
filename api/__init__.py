"""The HTTP API for apps and users (issue 5)."""
