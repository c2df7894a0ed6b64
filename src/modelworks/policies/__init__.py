"""Policies applied to every call, each in its own module, composed in `chain.PolicyChain`."""
