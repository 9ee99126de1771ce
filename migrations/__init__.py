"""Alembic migrations of the spamtl store (shipped in the wheel as ``spamtl.migrations``)."""
