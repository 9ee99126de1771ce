# Mail that spamtl calls spam (X-Spam-Flag: YES) goes into Junk, created if need be; the rest is
# left to the user's own Sieve script and the default, INBOX.
require ["fileinto", "mailbox"];

if header :is "X-Spam-Flag" "YES" {
  fileinto :create "Junk";
  stop;
}
