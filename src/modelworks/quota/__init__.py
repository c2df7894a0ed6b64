"""Rate limits with Azure's semantics: one limiter interface, in-process and Redis implementations."""
