"""Backends: one contract (`base.Backend`), many implementations."""
