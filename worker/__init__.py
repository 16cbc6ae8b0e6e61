"""The processes: dispatcher, worker runtime, CLI, and their settings."""
