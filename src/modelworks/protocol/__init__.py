"""The wire protocol: request models (validated at the edge) and response rendering."""
