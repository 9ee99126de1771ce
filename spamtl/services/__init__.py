"""Use cases: each opens its own session(s), owns the transaction and returns dataclasses."""
