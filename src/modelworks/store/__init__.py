"""The control-plane store: projects, keys, deployments, usage and audit, in SQLite or PostgreSQL."""
