"""Lets ``python -m spamtl`` work."""

from spamtl.cli import main

main()
