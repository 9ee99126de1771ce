"""Lets ``python -m spamtl`` work (same dispatch as the ``spamtl`` script)."""

from spamtl._entry import main

main()
