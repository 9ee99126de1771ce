"""Lets ``python -m spamtl`` work (same dispatch as the ``spamtl`` script)."""

from spamtl.cli.entry import main

main()
