# A message was moved (or copied) into Junk: teach the user's filter that it is spam.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "spamtl-learn.sh" [ "spam", "${username}" ];
