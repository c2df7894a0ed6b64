"""Public test helpers: a fake OpenAI-compatible upstream server."""
