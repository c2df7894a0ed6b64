"""Routing: which backends may serve a deployment (residency), which one does (choice, health, circuit breaking),
and how a call survives a backend's failure (retries before the first byte, idle timeouts after it)."""
