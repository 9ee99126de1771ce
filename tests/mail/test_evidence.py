"""spamtl.mail.evidence: Authentication-Results parsed leniently, trusted only for the site's id and position."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spamtl.mail.evidence import (
    MAX_AUTH_FIELDS,
    AuthResult,
    is_under,
    parse_authentication_results,
    received_by,
    trusted_results,
)
from spamtl.mail.parse import parse_message

SITE = "mx.example.org"


def _results(value: str) -> list[tuple[str, str]]:
    parsed = parse_authentication_results(value)
    assert parsed is not None
    return [(r.method, r.result) for r in parsed[1]]


@pytest.mark.parametrize(("value", "expected_id", "expected"), [
    ("mx.example.org; spf=pass smtp.mailfrom=a@b.example", SITE, [("spf", "pass")]),
    ("MX.Example.ORG 1; dkim=pass header.d=b.example", SITE, [("dkim", "pass")]),  # version, case
    ('"mx.example.org"; dmarc=fail header.from=b.example', SITE, [("dmarc", "fail")]),  # quoted id
    ("mx.example.org; none", SITE, []),  # no-result
    ("mx.example.org (our MX; it checks); spf = softfail (a comment; with ; semicolons) smtp.mailfrom=x",
     SITE, [("spf", "softfail")]),
    ("mx.example.org;\n\tdkim=pass\n\t header.i=@b.example;\n arc=pass (i=1)", SITE,
     [("dkim", "pass"), ("arc", "pass")]),  # folded
    ("mx.example.org; dkim/1=neutral; ???; iprev=pass policy.iprev=1.2.3.4; spf=temperror", SITE,
     [("dkim", "neutral"), ("iprev", "pass"), ("spf", "temperror")]),  # method version, garbage between
])
def test_results_are_read_through_comments_quotes_and_folds(value: str, expected_id: str,
                                                            expected: list[tuple[str, str]]) -> None:
    parsed = parse_authentication_results(value)
    assert parsed is not None and parsed[0] == expected_id
    assert [(r.method, r.result) for r in parsed[1]] == expected


def test_properties_are_lower_cased_and_unquoted() -> None:
    parsed = parse_authentication_results('mx.example.org; dkim=pass (ok) header.d="Shop.Example" header.s=s1 '
                                          "header.b=AbC; spf=pass smtp.mailfrom=Bounce@Mail.Shop.Example")
    assert parsed is not None
    dkim, spf = parsed[1]
    assert dkim.get("header.d") == "shop.example" and dkim.get("header.s") == "s1"
    assert spf.get("smtp.mailfrom") == "bounce@mail.shop.example"
    assert spf.get("header.d") == ""


@pytest.mark.parametrize("value", [
    "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=b.example; dkim=pass",  # no authserv-id (Microsoft)
    "", "   ", ";", "; spf=pass", "(only a comment)", '"unclosed; spf=pass', "mx..example.org; spf=pass",
    "-mx.example.org; spf=pass",
])
def test_a_field_without_a_usable_authserv_id_gives_nothing(value: str) -> None:
    assert parse_authentication_results(value) is None


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_text_parses_or_gives_none(value: str) -> None:
    parsed = parse_authentication_results(value)
    assert parsed is None or (isinstance(parsed[0], str) and all(isinstance(r, AuthResult) for r in parsed[1]))


@pytest.mark.parametrize("value", [
    "mx.example.org; " + "(" * 2000 + "spf=pass",  # unclosed nested comments
    "mx.example.org; " + '"\\' * 1000,  # escapes in an unclosed quoted string
    "mx.example.org; " + "spf=pass " + "a.b=c " * 330,  # many properties
    "mx.example.org" + "; dkim=pass" * 200,  # many results
    "mx.example.org; spf=pass " + "a" * 1980,  # a long run that is no property
    "mx.example.org; spf=pass " + "a-" * 990,
    'mx.example.org; spf=pass x.y="' + "a" * 1980,  # an unclosed quoted value
    "mx.example.org; spf=pass " + 'a.b="' * 330,
    "mx.example.org; " + ("spf=pass " + "a" * 100 + "; ") * 18,  # many results, each with a long run
])
def test_hostile_values_take_bounded_time(value: str) -> None:
    value = value[:2000]  # what the parser keeps of a header value
    start = time.process_time()
    for _ in range(20):
        parse_authentication_results(value)
    assert (time.process_time() - start) / 20 < 0.003  # about 0.2 ms at most here; 30 ms if quadratic


def test_received_by_names_the_receiving_host() -> None:
    assert received_by("from a.b.example (a.b.example [192.0.2.1]) by MX.example.org (Postfix) with ESMTPS id X;"
                       " Tue, 1 Jan 2002 00:00:00 +0000") == SITE
    assert received_by("from nearby by\tmx2.example.org. with LMTP") == "mx2.example.org"
    assert received_by("from standby.example (x) with SMTP; by-the-way") == ""  # "by" only in the date part
    assert received_by("") == ""


def _headers(raw: bytes) -> tuple[tuple[str, str], ...]:
    return parse_message(raw).headers


BORDER = b"Received: from sender.example (sender.example [192.0.2.9]) by mx.example.org with ESMTP; Tue, 1 Jan 2002\n"
GENUINE = b"Authentication-Results: mx.example.org; dkim=pass header.d=shop.example; spf=pass\n"
FORGED = b"Authentication-Results: mx.example.org; dmarc=pass header.from=bank.example\n"


def _trusted(raw: bytes, ids: tuple[str, ...] = (SITE,)) -> list[tuple[str, str]]:
    return [(r.method, r.result) for r in trusted_results(_headers(raw), ids)]


def test_a_field_above_the_sites_received_counts() -> None:
    raw = GENUINE + BORDER + b"From: a@shop.example\n\nhi"
    assert _trusted(raw) == [("dkim", "pass"), ("spf", "pass")]
    # An inner hop of the site above it changes nothing (its Received is by another host).
    assert _trusted(b"Received: from mx.example.org by store.example.org with LMTP; x\n" + raw) == \
        [("dkim", "pass"), ("spf", "pass")]


def test_a_forged_field_below_the_sites_received_counts_for_nothing() -> None:
    # Everything below the Received the site's MTA wrote was there when the mail arrived: the sender's.
    raw = GENUINE + BORDER + FORGED + b"Received: from x by relay.sender.example; y\nFrom: a@bank.example\n\nhi"
    assert _trusted(raw) == [("dkim", "pass"), ("spf", "pass")]
    # With no field of the site's own, the forged one alone still counts for nothing ...
    assert _trusted(BORDER + FORGED + b"From: a@bank.example\n\nhi") == []
    # ... nor when the sender also forges a Received "by" the site's MTA: the topmost one is the site's.
    fake_hop = b"Received: from y by mx.example.org with ESMTP; z\n"
    assert _trusted(BORDER + FORGED + fake_hop + b"From: a@bank.example\n\nhi") == []
    assert _trusted(BORDER + fake_hop + FORGED + b"From: a@bank.example\n\nhi") == []


def test_a_field_just_below_the_sites_received_counts_for_nothing() -> None:
    # Where milters behind Postfix write theirs: indistinguishable from the top of what the sender wrote.
    assert _trusted(BORDER + GENUINE + b"From: a@shop.example\n\nhi") == []


def test_an_untrusted_authserv_id_counts_for_nothing() -> None:
    raw = (b"Authentication-Results: mx.other.example; dkim=pass header.d=bank.example\n" + BORDER
           + b"From: a@bank.example\n\nhi")
    assert _trusted(raw) == []
    assert _trusted(GENUINE + BORDER + b"\nhi", ids=()) == []  # nothing configured: nothing trusted


def test_a_field_whose_mta_wrote_no_received_counts_for_nothing() -> None:
    assert _trusted(GENUINE + b"From: a@shop.example\n\nhi") == []
    assert _trusted(GENUINE + b"Received: from a by relay.elsewhere.example; x\n\nhi") == []


def test_a_domain_authserv_id_is_placed_by_its_hosts_received() -> None:
    raw = (b"Authentication-Results: example.org; spf=fail smtp.mailfrom=x@bad.example\n" + BORDER
           + b"Authentication-Results: example.org; spf=pass\n\nhi")
    assert _trusted(raw, ids=("example.org",)) == [("spf", "fail")]


def test_each_site_id_has_its_own_boundary() -> None:
    raw = (b"Authentication-Results: filter.example.org; arc=pass\n"
           b"Received: from mx.example.org by filter.example.org; x\n" + GENUINE + BORDER + FORGED + b"\nhi")
    assert sorted(_trusted(raw, ids=("filter.example.org", SITE))) == [("arc", "pass"), ("dkim", "pass"),
                                                                      ("spf", "pass")]


def test_fields_read_are_capped() -> None:
    many = b"Authentication-Results: mx.example.org; spf=pass\n" * (MAX_AUTH_FIELDS + 5)
    assert len(_trusted(many + BORDER + b"\nhi")) == MAX_AUTH_FIELDS


def test_under_means_the_name_or_below_it_at_a_dot() -> None:
    assert is_under("mx.example.org", "example.org") and is_under("example.org", "example.org")
    assert not is_under("badexample.org", "example.org")  # a look-alike is not below
    assert not is_under("example.org", "mx.example.org") and not is_under("", "example.org")
    # So a look-alike host's Received does not place the site's boundary: BORDER does.
    raw = (b"Received: from x by mxexample.org; y\nAuthentication-Results: example.org; spf=pass\n" + BORDER
           + b"\nhi")
    assert _trusted(raw, ids=("example.org",)) == [("spf", "pass")]
