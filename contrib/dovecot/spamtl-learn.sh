#!/bin/sh
# spamtl-learn.sh spam|ham USER < message
#
# Dovecot's IMAPSieve pipe (report-spam.sieve, report-ham.sieve) runs this as the mail user when
# USER moves a message into or out of Junk.  `spamtl tell` hands the message to `spamtl serve`
# (no access to the store needed) and exits 0 only when the daemon confirms it stored the label.
# Its exit status is this script's, so Dovecot logs every failure instead of losing the label:
# 69 daemon not running, 75 temporary (store failed, busy, slow), 77 not permitted (serve
# --allow-tell, --trust, or the socket's group), 65 message too large.
#
# Install as /etc/dovecot/sieve/spamtl-learn.sh, mode 0755.
set -eu

case "${1-}" in
  spam | ham) ;;
  *)
    echo "usage: spamtl-learn.sh spam|ham USER < message" >&2
    exit 64
    ;;
esac
user=${2:?usage: spamtl-learn.sh spam|ham USER < message}

exec /usr/local/bin/spamtl tell --socket /run/spamtl/spamd.sock --user "$user" "--$1"
