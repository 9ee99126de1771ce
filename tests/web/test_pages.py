"""``spamtl web`` over HTTP: who sees what, CSRF on every change, one-click corrections through the feedback
path, the admin's rollback, message text shown as text.  A real server process on loopback (conftest)."""

from __future__ import annotations

import html
import re

import pytest

from tests.conftest import count_rows, run, run_sql

from .conftest import Client, Site, start_web, stop_web


def _latest_label(site: Site, user: str, sha: str) -> tuple[str, str] | None:
    rows = run_sql(site.db, "SELECT l.label, l.source FROM labels l JOIN users u ON u.id = l.user_id "
                            "JOIN messages m ON m.id = l.message_id WHERE u.name = :u AND m.sha256 = :s "
                            "ORDER BY l.id DESC", {"u": user, "s": sha})
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def _score(page: str, element: str = "score") -> float:
    found = re.search(rf'id="{element}">([0-9.]+)<', page)
    assert found, f"no #{element} on the page"
    return float(found.group(1))


def test_pages_need_a_login(site: Site) -> None:
    anonymous = Client(site.url)
    for path in ("/", "/mail", "/review", "/corrections", "/admin", f"/mail/{site.messages['alice'][0]}"):
        status, headers, _ = anonymous.request(path)
        assert status == 303 and headers["location"].startswith("/login"), path
    status, _, page = anonymous.post("/login", {"token": "not-a-token"})
    assert status == 403 and "Unknown token" in page
    assert anonymous.cookie("spamtl_token") is None


def test_tokens_are_stored_as_digests_only(site: Site) -> None:
    stored = {str(r[0]) for r in run_sql(site.db, "SELECT digest FROM access_tokens")}
    assert len(stored) == 3
    assert not stored & set(site.tokens.values())
    import hashlib

    assert hashlib.sha256(site.tokens["alice"].encode()).hexdigest() in stored


def test_a_user_sees_their_verdicts_with_both_cutoffs(site: Site) -> None:
    alice = Client(site.url).login(site.tokens["alice"])
    status, _, page = alice.request("/mail")
    assert status == 200
    rows = re.findall(r'href="/mail/([0-9a-f]{64})"', page)
    assert set(rows) == set(site.messages["alice"])  # hers, all of them, nobody else's
    assert not set(rows) & set(site.messages["bob"])
    assert "spam at <b>0.9990</b>" in page and "ham below <b>0.0010</b>" in page  # her override, from the store


def test_another_users_message_is_not_found(site: Site) -> None:
    bob = Client(site.url).login(site.tokens["bob"])
    hers = site.messages["alice"][0]
    status, _, page = bob.request(f"/mail/{hers}")
    _, _, missing = bob.request("/mail/" + "0" * 64)
    assert status == 404
    assert page.replace(hers[:12], "0" * 12) == missing  # no different from a message that does not exist
    before = _latest_label(site, "bob", hers)
    status, _, _ = bob.post(f"/mail/{hers}/label", {"label": "ham"})
    assert status == 404 and _latest_label(site, "bob", hers) == before is None


def test_the_explanation_shows_the_parts_and_the_cutoffs(site: Site) -> None:
    alice = Client(site.url).login(site.tokens["alice"])
    sha = site.messages["alice"][0]
    status, _, page = alice.request(f"/mail/{sha}")
    assert status == 200
    for part in ("shared", "personal"):
        assert f'id="part-{part}"' in page
    assert _score(page, "spam-cutoff") == 0.999 and _score(page, "ham-cutoff") == 0.001
    assert re.search(r'id="verdict" class="unsure">unsure<', page)  # 0.001 < p < 0.999
    explained = run(site.db, "explain", "alice", "--id", sha, "--format", "json")
    assert explained.exit_code == 0
    import json

    assert _score(page) == pytest.approx(json.loads(explained.output)["probability"], abs=5e-5)


def test_one_click_marks_spam_through_the_feedback_path(site: Site) -> None:
    alice = Client(site.url).login(site.tokens["alice"])
    sha = site.messages["alice"][1]
    _, _, page = alice.request(f"/mail/{sha}")
    before = _score(page)
    status, headers, _ = alice.post(f"/mail/{sha}/label", {"label": "spam"})
    assert status == 303 and headers["location"].startswith(f"/mail/{sha}?from=")
    assert _latest_label(site, "alice", sha) == ("spam", "feedback")
    status, _, page = alice.request(headers["location"])
    after = _score(page, "score-after")
    assert after > before  # her personal part was refitted at once
    assert _score(page) == after
    _, _, listed = alice.request("/corrections")
    assert f'href="/mail/{sha}"' in listed


def test_a_change_without_the_csrf_value_is_refused(site: Site) -> None:
    alice = Client(site.url).login(site.tokens["alice"])
    sha = site.messages["alice"][2]
    labels = count_rows(site.db, "labels")
    status, _, _ = alice.request(f"/mail/{sha}/label", {"label": "spam"})  # no csrf field
    assert status == 403
    status, _, _ = alice.request(f"/mail/{sha}/label", {"label": "spam", "csrf": "forged"})
    assert status == 403
    status, _, _ = alice.post(f"/mail/{sha}/label", {"label": "spam"},
                              headers={"Origin": "http://evil.example"})
    assert status == 403
    assert count_rows(site.db, "labels") == labels


def test_users_cannot_open_the_admin_pages(site: Site) -> None:
    alice = Client(site.url).login(site.tokens["alice"])
    assert alice.request("/admin")[0] == 403
    active = run_sql(site.db, "SELECT id FROM model_versions WHERE status = 'active'")
    assert alice.post("/admin/versions/1/activate", {})[0] == 403
    assert run_sql(site.db, "SELECT id FROM model_versions WHERE status = 'active'") == active


def test_the_admin_rolls_a_version_back(site: Site) -> None:
    root = Client(site.url).login(site.tokens["root"])
    status, _, page = root.request("/admin")
    assert status == 200
    assert 'id="users"' in page and ">alice<" in page and ">bob<" in page
    assert page.count("<svg") == 3
    assert not any(sha in page for sha in site.messages["alice"])  # no message of anyone's on the admin page
    (active,), = run_sql(site.db, "SELECT id FROM model_versions WHERE status = 'active'")
    assert active == 2 and 'id="activate-1"' in page and 'id="activate-2"' not in page
    status, headers, _ = root.post("/admin/versions/1/activate", {})
    assert status == 303
    assert run_sql(site.db, "SELECT id FROM model_versions WHERE status = 'active'") == [(1,)]
    _, _, page = root.request(headers["location"])
    assert 'id="activated">Model version 1 is now active' in page
    assert root.post("/admin/versions/2/activate", {})[0] == 303  # and forward again for the other tests
    assert run_sql(site.db, "SELECT id FROM model_versions WHERE status = 'active'") == [(2,)]


def test_message_text_is_escaped_text(site: Site) -> None:
    alice = Client(site.url).login(site.tokens["alice"])
    status, headers, page = alice.request(f"/mail/{site.hostile}")
    assert status == 200
    assert "<script" not in page and "<img" not in page and "<b>bold</b>" not in page
    assert html.escape('<script>alert("x")</script>', quote=False) in page.replace("&#34;", '"')
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none': no script at all
    assert "default-src 'none'" in headers["content-security-policy"]


def test_logging_out_forgets_the_login(site: Site) -> None:
    alice = Client(site.url).login(site.tokens["alice"])
    status, headers, _ = alice.post("/logout", {})
    assert status == 303 and headers["location"] == "/login"
    assert alice.request("/mail")[0] == 303


def test_a_trusted_proxy_header_logs_in(site: Site) -> None:
    config = site.tmp / "proxy.toml"
    config.write_text('web_user_header = "X-Remote-User"\nweb_admins = ["root"]\n')
    proc, url = start_web(site.db, site.tmp, env={"SPAMTL_CONFIG": str(config)})
    try:
        proxied = Client(url)
        status, _, page = proxied.request("/mail", headers={"X-Remote-User": "bob"})
        assert status == 200 and set(re.findall(r'href="/mail/([0-9a-f]{64})"', page)) == set(site.messages["bob"])
        assert proxied.request("/admin", headers={"X-Remote-User": "bob"})[0] == 403
        assert proxied.request("/admin", headers={"X-Remote-User": "root"})[0] == 200
    finally:
        stop_web(proc)
    untrusted = site.tmp / "untrusted.toml"
    untrusted.write_text('web_user_header = "X-Remote-User"\nweb_trusted_proxies = ["192.0.2.1"]\n')
    proc, url = start_web(site.db, site.tmp, env={"SPAMTL_CONFIG": str(untrusted)})
    try:
        assert Client(url).request("/mail", headers={"X-Remote-User": "bob"})[0] == 303  # not from the proxy
    finally:
        stop_web(proc)
    # off by default: the header means nothing to the site of the other tests
    assert Client(site.url).request("/mail", headers={"X-Remote-User": "bob"})[0] == 303


def test_a_remote_address_is_refused_without_allow_remote(site: Site) -> None:
    result = run(site.db, "web", "--listen", "192.0.2.1:8783")
    assert result.exit_code != 0
    assert "refusing to listen on 192.0.2.1 (not a loopback address)" in result.output


def test_revoked_and_deleted_users_tokens_stop_working(site: Site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run(site.db, "users", "token", "bob")
    token = result.output.strip()
    assert Client(site.url).login(token).request("/mail")[0] == 200
    assert "Revoked 2 tokens of 'bob'" in run(site.db, "users", "token", "bob", "--revoke").output
    status, _, _ = Client(site.url).post("/login", {"token": token})
    assert status == 403
    unknown = run(site.db, "users", "token", "nobody")
    assert unknown.exit_code != 0 and "no user 'nobody' in the store" in unknown.output
    site.tokens["bob"] = run(site.db, "users", "token", "bob").output.strip()  # for the tests after this one


def _web_feedback(site: Site) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = Client(site.url).request("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for family in text_string_to_metric_families(body):
        if family.name == "spamtl_feedback":
            return sum(s.value for s in family.samples
                       if s.name == "spamtl_feedback_total" and s.labels == {"label": "ham", "via": "web"})
    raise AssertionError("no spamtl_feedback_total on /metrics")


def test_metrics_count_the_pages_corrections(site: Site) -> None:
    before = _web_feedback(site)
    alice = Client(site.url).login(site.tokens["alice"])
    assert alice.post(f"/mail/{site.messages['alice'][4]}/label", {"label": "ham"})[0] == 303
    assert alice.request(f"/mail/{site.messages['alice'][4]}/label", {"label": "ham"})[0] == 403  # refused: no count
    assert _web_feedback(site) == before + 1


def test_the_review_page_lists_unsure_mail_first(site: Site) -> None:
    # bob's cutoffs at his lowest and highest score: those two messages are ham and spam (and, being the
    # surest, the last a plain ranking would list), the rest unsure
    scores = sorted(float(p) for (p,) in run_sql(
        site.db, "SELECT c.probability FROM classifications c JOIN users u ON u.id = c.user_id WHERE u.name = 'bob'"))
    assert run(site.db, "cutoffs", "set", "bob", "--spam", f"{scores[-1] - 1e-6:.8f}",
               "--ham", f"{scores[0] + 1e-6:.8f}").exit_code == 0
    try:
        bob = Client(site.url).login(site.tokens["bob"])
        status, _, page = bob.request("/review")
    finally:
        assert run(site.db, "cutoffs", "unset", "bob").exit_code == 0
    assert status == 200
    verdicts = re.findall(r'<td class="(spam|ham|unsure)">', page)
    assert sorted(verdicts) == ["ham"] + ["spam"] + ["unsure"] * (len(site.messages["bob"]) - 2)
    assert verdicts == sorted(verdicts, key=lambda v: v != "unsure")
    listed = re.findall(r'href="/mail/([0-9a-f]{64})"', page)
    assert set(listed) == set(site.messages["bob"])


def test_without_the_web_extra_one_line_says_what_to_install(site: Site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    monkeypatch.delitem(sys.modules, "spamtl.web.server", raising=False)
    result = run(site.db, "web", "--listen", "127.0.0.1:1")
    assert result.exit_code != 0
    assert "spamtl web needs the web extra (uvicorn is missing): pip install 'spamtl[web]'" in result.output


def test_bad_input_is_a_400_page_and_stores_nothing(site: Site) -> None:
    alice = Client(site.url).login(site.tokens["alice"])
    labels = count_rows(site.db, "labels")
    status, _, page = alice.post(f"/mail/{site.messages['alice'][5]}/label", {"label": "eggs"})
    assert status == 400 and "unknown label" in page
    status, _, page = alice.request("/mail?before=yesterday")
    assert status == 400 and "bad page position" in page
    assert count_rows(site.db, "labels") == labels


def test_a_form_that_is_not_ours_is_refused_before_it_is_read_whole(site: Site) -> None:
    anonymous = Client(site.url)
    csrf = anonymous.csrf()
    big = {"csrf": csrf, "token": "x" * 20_000}
    status, _, page = anonymous.request("/login", big)
    assert status == 400 and "larger than 16384 bytes" in page
    many = {"csrf": csrf, **{f"f{i}": "1" for i in range(30)}}
    assert anonymous.request("/login", many)[0] == 400
    status, _, page = anonymous.request("/login", {"csrf": csrf})  # no token at all: an unknown token
    assert status == 403 and "Unknown token" in page
    alice = Client(site.url).login(site.tokens["alice"])
    labels = count_rows(site.db, "labels")
    status, _, _ = alice.request(f"/mail/{site.messages['alice'][5]}/label", None)  # not a POST body at all
    assert status == 405
    import urllib.request

    req = urllib.request.Request(site.url + f"/mail/{site.messages['alice'][5]}/label", method="POST",
                                 data=b'{"label": "spam"}', headers={"Content-Type": "application/json"})
    req.add_header("Cookie", "; ".join(f"{c.name}={c.value}" for c in alice.jar))
    try:
        urllib.request.urlopen(req, timeout=10)
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status == 400
    assert count_rows(site.db, "labels") == labels
