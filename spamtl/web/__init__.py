"""`spamtl web`: the pages for users and admins, and their /metrics."""
