#!/bin/sh
# spamtl-filter.sh spamc|classify -f SENDER -- RECIPIENT < message
#
# Postfix's pipe (contrib/postfix/master.cf) runs this for mail that smtpd received: it asks spamtl
# for RECIPIENT's verdict and hands the message, with spamtl's headers (X-Spamtl-Status, and
# X-Spam-Flag: YES for spam), back to Postfix with sendmail, from the same envelope sender (an
# empty SENDER, a bounce, stays a bounce).
#   spamc     through spamtl serve: needs only the daemon's socket (the pipe's user=mail).
#   classify  spamtl classify --filter: opens the store, so it runs as the store's owner.
# Mail is never lost: when the daemon is down, spamc passes the message on unchanged; when
# classify fails (exit 1, 2 or 70) it passes it on marked "X-Spamtl-Status: error"; either is
# delivered.  Anything else (the filter killed, sendmail failing, more than one recipient)
# exits 75: Postfix keeps the mail, logs this script's line and tries again later.
#
# Install as /usr/local/bin/spamtl-filter.sh, mode 0755.
set -u
PATH=/usr/local/bin:/usr/bin:/bin
export PATH

SOCKET=/run/spamtl/spamd.sock
SPAMC=/usr/bin/spamc
SPAMTL=/usr/local/bin/spamtl
STORE=sqlite:////var/lib/spamtl/spamtl.sqlite3
SENDMAIL=/usr/sbin/sendmail
EX_USAGE=64
EX_TEMPFAIL=75

usage() {
  echo "usage: spamtl-filter.sh spamc|classify -f SENDER -- RECIPIENT < message" >&2
  exit "$EX_USAGE"
}

[ "$#" -ge 5 ] && [ "$2" = -f ] && [ "$4" = -- ] || usage
mode=$1
sender=$3
shift 4
case $mode in
  spamc | classify) ;;
  *) usage ;;
esac
if [ "$#" -ne 1 ]; then
  echo "spamtl-filter.sh: $# recipients in one delivery, and each needs their own verdict:" \
    "set the transport's _destination_recipient_limit = 1 in main.cf" >&2
  exit "$EX_TEMPFAIL"
fi
recipient=$1

filtered=$(mktemp "${TMPDIR:-/tmp}/spamtl-filter.XXXXXX") || exit "$EX_TEMPFAIL"
trap 'rm -f "$filtered"' EXIT
trap 'exit "$EX_TEMPFAIL"' HUP INT TERM

if [ "$mode" = spamc ]; then
  "$SPAMC" -U "$SOCKET" -u "$recipient" >"$filtered"
else
  "$SPAMTL" classify --db "$STORE" --filter -- "$recipient" >"$filtered"
fi
status=$?
case $mode:$status in
  *:0 | classify:1 | classify:2 | classify:70) ;;
  *)
    echo "spamtl-filter.sh: $mode failed (exit $status); the mail stays queued" >&2
    exit "$EX_TEMPFAIL"
    ;;
esac

"$SENDMAIL" -G -i -f "$sender" -- "$recipient" <"$filtered" || {
  echo "spamtl-filter.sh: sendmail failed (exit $?); the mail stays queued" >&2
  exit "$EX_TEMPFAIL"
}
