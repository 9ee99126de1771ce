"""Web logins: tokens stored as digests, revoked with their user, and the trusted proxy's header."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from spamtl.errors import UnknownUserError
from spamtl.services.access import Principal, create_token, proxy_holder, revoke_tokens, token_holder
from spamtl.services.users import delete_user, rename_user
from spamtl.settings import Settings
from spamtl.store.engine import transaction
from spamtl.store.schema import AccessToken
from spamtl.store.statements import create_user
from tests.conftest import NOW


@pytest.fixture
def users(engine):  # type: ignore[no-untyped-def]
    with transaction(engine) as session:
        for name in ("alice", "bob"):
            create_user(session, name=name, group=None, now=NOW)
    return engine


def test_a_token_logs_in_as_its_name_and_only_its_digest_is_kept(users) -> None:  # type: ignore[no-untyped-def]
    token = create_token(users, "alice", admin=False, now=NOW)
    admin = create_token(users, "root", admin=True, now=NOW)  # an admin need not be a mail user
    assert token_holder(users, token, now=NOW) == Principal("alice", False)
    assert token_holder(users, admin, now=NOW) == Principal("root", True)
    assert token_holder(users, token + "x", now=NOW) is None
    assert token_holder(users, "", now=NOW) is None
    with transaction(users) as session:
        digests = {t.digest for t in session.query(AccessToken)}
    assert digests == {hashlib.sha256(t.encode()).hexdigest() for t in (token, admin)}


def test_a_users_token_needs_the_user(users) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownUserError, match="no user 'carol' in the store"):
        create_token(users, "carol", admin=False, now=NOW)


def test_last_use_is_written_at_most_once_a_minute(users) -> None:  # type: ignore[no-untyped-def]
    token = create_token(users, "alice", admin=False, now=NOW)

    def last_used():  # type: ignore[no-untyped-def]
        with transaction(users) as session:
            return session.query(AccessToken).one().last_used_at

    token_holder(users, token, now=NOW)
    token_holder(users, token, now=NOW + timedelta(seconds=59))
    assert last_used() == NOW
    token_holder(users, token, now=NOW + timedelta(seconds=61))
    assert last_used() == NOW + timedelta(seconds=61)


def test_tokens_go_with_revocation_deletion_and_follow_a_rename(users) -> None:  # type: ignore[no-untyped-def]
    a1, a2 = (create_token(users, "alice", admin=False, now=NOW) for _ in range(2))
    b = create_token(users, "bob", admin=False, now=NOW)
    assert revoke_tokens(users, "alice") == 2
    assert token_holder(users, a1, now=NOW) is None and token_holder(users, a2, now=NOW) is None
    rename_user(users, "bob", "robert")
    assert token_holder(users, b, now=NOW) == Principal("robert")
    delete_user(users, "robert")
    assert token_holder(users, b, now=NOW) is None


def _settings(**kw: object) -> Settings:
    return Settings(database_url="sqlite://", **kw)  # type: ignore[arg-type]


def test_the_proxy_header_counts_only_when_set_and_from_a_trusted_proxy() -> None:
    on = _settings(web_user_header="X-Remote-User", web_admins=("root",))
    assert proxy_holder(on, "127.0.0.1", "alice") == Principal("alice", False)
    assert proxy_holder(on, "::1", "root") == Principal("root", True)
    assert proxy_holder(on, "192.0.2.7", "alice") is None  # not the proxy: anyone could send the header
    assert proxy_holder(_settings(), "127.0.0.1", "alice") is None  # off by default
    assert proxy_holder(on, "127.0.0.1", "") is None
    assert proxy_holder(on, "127.0.0.1", "bad\nname") is None
    assert proxy_holder(on, None, "alice") is None
    network = _settings(web_user_header="X-Remote-User", web_trusted_proxies=("10.0.0.0/8",))
    assert proxy_holder(network, "10.1.2.3", "alice") == Principal("alice")
    assert proxy_holder(network, "127.0.0.1", "alice") is None
