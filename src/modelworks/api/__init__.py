"""HTTP layer: routes, the error envelope, streaming."""
