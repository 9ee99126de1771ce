"""The pages in a real browser: Debian's headless Chromium, driven by Selenium, against a real ``spamtl web``.

What a person does and sees: alice logs in, opens an unsure message from her review queue, reads why
(the score beside both cutoffs, the parts), marks it spam and sees the score move and the correction
listed; bob cannot open alice's mail by its URL; the admin rolls back to an older model version; a
message written as HTML and script shows as text and runs nothing; logging out ends the session.
Where it proves the effect, the store is checked too.  Screenshots of the main pages go to
$SPAMTL_TEST_OUTPUT/browser/ (CI: test-output/browser/) or a pytest temporary folder; the path is printed.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_sql
from tests.web.conftest import Site

if os.environ.get("CI") != "true":  # on CI the test extra is installed: a missing selenium fails collection
    pytest.importorskip("selenium", reason="selenium (the test extra) is not installed")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package `chromium`
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's package `chromium-driver`
WINDOW = (1280, 900)
"""Browser window in CSS pixels."""
SHOT_MAX_HEIGHT = 4000
"""Tallest screenshot in CSS pixels (a page is shot whole up to this)."""
PAGE_SECONDS = 30
"""Longest wait for a page load (a refit after a correction happens within the request)."""


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    """One headless Chromium for the module; skipped without the Debian packages, except on CI (fails)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = f"needs Debian's chromium and chromium-driver: {', '.join(missing)} missing"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI installs them: see .ci/run)")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as env:
        # Both paths are given, so Selenium Manager (which may download a browser or driver) is not run;
        # should a release run it anyway, it stays offline.
        env.setenv("SE_OFFLINE", "true")
        browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(PAGE_SECONDS)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The folder for screenshots ($SPAMTL_TEST_OUTPUT or a temporary one); says where at the end."""
    given = os.environ.get("SPAMTL_TEST_OUTPUT")
    folder = Path(given) / "browser" if given else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    saved = sorted(p.name for p in folder.glob("*.png"))
    # Printed past pytest's output capture, so a plain run shows it too.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nbrowser screenshots ({len(saved)}: {', '.join(saved) or 'none'}) in {folder}")


def shoot(driver: WebDriver, folder: Path, name: str) -> None:
    """A PNG of the whole page, below the window's fold too (Chromium's DevTools capture)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], SHOT_MAX_HEIGHT), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    (folder / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def status(driver: WebDriver) -> int:
    """The HTTP status of the page the browser shows (the Navigation Timing entry)."""
    return int(driver.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus"))


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def click_through(driver: WebDriver, element: WebElement) -> None:
    """Click a link or a form's button and wait until the next page has loaded (a click returns
    before the navigation it starts has finished).

    The old page is told apart from the new one by a mark on its ``window``: every document gets a
    window of its own. (Selenium's ``staleness_of`` asks about an element of the old page, and
    chromedriver can answer that with an error while the page is being replaced.)"""
    driver.execute_script("window.spamtlOldPage = true")
    element.click()
    WebDriverWait(driver, PAGE_SECONDS, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return !window.spamtlOldPage && document.readyState === 'complete'"))


def log_in(driver: WebDriver, site: Site, name: str, folder: Path | None = None) -> None:
    """Start a fresh session (no cookies) and log in as ``name`` through the login form."""
    driver.get(site.url + "/login")
    driver.delete_all_cookies()
    driver.get(site.url + "/login")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Log in"
    by_id(driver, "token").send_keys(site.tokens[name])
    if folder is not None:
        shoot(driver, folder, "login")
    click_through(driver, by_id(driver, "login"))
    header = driver.find_element(By.TAG_NAME, "header").text
    assert name in header and "Log out" in header, header


def user_id(site: Site, name: str) -> int:
    return int(run_sql(site.db, "SELECT id FROM users WHERE name = :n", {"n": name})[0][0])


def labels_of(site: Site, name: str, sha256: str) -> list[tuple[object, ...]]:
    return run_sql(site.db, "SELECT l.label, l.source FROM labels l JOIN messages m ON m.id = l.message_id "
                            "WHERE l.user_id = :u AND m.sha256 = :s ORDER BY l.id",
                   {"u": user_id(site, name), "s": sha256})


def shown_number(driver: WebDriver, element_id: str) -> float:
    return float(by_id(driver, element_id).text)


def _verdict_rows(driver: WebDriver) -> dict[str, tuple[str, str]]:
    """The verdicts page's rows: sha256 -> (verdict, score) as shown."""
    out = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "table#verdicts tr")[1:]:
        cells = row.find_elements(By.TAG_NAME, "td")
        sha = cells[1].find_element(By.TAG_NAME, "a").get_attribute("href").rsplit("/", 1)[-1]
        out[sha] = (cells[2].text, cells[3].text)
    return out


def _open_unsure(driver: WebDriver, site: Site) -> tuple[str, str]:
    """From the review page, open alice's unsure message with the lowest score (most room to move
    toward spam) that is not the hostile one; returns its sha256 and subject."""
    rows = driver.find_elements(By.CSS_SELECTOR, "table#review tr")[1:]
    unsure = []
    for row in rows:
        cells = row.find_elements(By.TAG_NAME, "td")
        link = cells[0].find_element(By.TAG_NAME, "a")
        sha = link.get_attribute("href").rsplit("/", 1)[-1]
        if cells[1].text == "unsure" and sha != site.hostile:
            unsure.append((float(cells[2].text), sha, link))
    assert unsure, "alice's review page lists no unsure message"
    assert [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")][1] == "unsure", "unsure mail is not first"
    _, sha, link = min(unsure, key=lambda u: u[0])
    subject = link.text
    click_through(driver, link)
    assert driver.current_url == f"{site.url}/mail/{sha}"
    return sha, subject


def _read_explanation(driver: WebDriver) -> float:
    """The message page shows the score between both cutoffs and the parts that add up to it."""
    assert by_id(driver, "verdict").text == "unsure"
    score, spam_at, ham_below = (shown_number(driver, i) for i in ("score", "spam-cutoff", "ham-cutoff"))
    assert (spam_at, ham_below) == (0.999, 0.001)  # alice's cutoffs, set by the fixture
    assert ham_below <= score < spam_at
    assert by_id(driver, "why").text.strip()
    kinds = [p.get_attribute("id") for p in by_id(driver, "parts").find_elements(By.CSS_SELECTOR, "div.part")]
    assert kinds == ["part-shared", "part-group", "part-personal"]  # alice is in a group (the fixture's)
    # Each part's heading ends in its total; the logistic of their sum is the score shown.
    totals = [float(h.text.rsplit(":", 1)[1]) for h in by_id(driver, "parts").find_elements(By.TAG_NAME, "h3")]
    assert 1 / (1 + math.exp(-sum(totals))) == pytest.approx(score, abs=2e-3)
    return score


def test_user_marks_an_unsure_message_spam_and_sees_the_score_move(driver: WebDriver, site: Site,
                                                                   shots: Path) -> None:
    log_in(driver, site, "alice", shots)
    assert driver.current_url == site.url + "/mail"
    logged = _verdict_rows(driver)
    assert set(logged) == set(site.messages["alice"])
    shoot(driver, shots, "verdicts")
    click_through(driver, driver.find_element(By.LINK_TEXT, "Review"))
    shoot(driver, shots, "review")
    sha, subject = _open_unsure(driver, site)
    before = _read_explanation(driver)
    assert labels_of(site, "alice", sha) == []
    shoot(driver, shots, "message")

    click_through(driver, by_id(driver, "mark-spam"))
    moved = by_id(driver, "moved")
    old, new = (float(b.text) for b in moved.find_elements(By.TAG_NAME, "b"))
    assert old == pytest.approx(before, abs=1e-4)
    assert new == shown_number(driver, "score") == shown_number(driver, "score-after")
    assert 1 - new < 1 - old, (old, new)  # the refit took the label: nearer spam
    assert labels_of(site, "alice", sha) == [("spam", "feedback")]
    shoot(driver, shots, "message-marked")

    click_through(driver, driver.find_element(By.LINK_TEXT, "Corrections"))
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "table#corrections tr")[1:]]
    # What the filter said then is the verdict log's (alice's cutoffs were widened after it).
    said, score_then = logged[sha]
    assert [r for r in rows if r[1] == subject] == [[rows[0][0], subject, said, score_then, "spam"]]
    outcome = {"spam": "1 confirmed", "ham": "1 spam let through", "unsure": "1 unsure"}[said]
    counts = by_id(driver, "counts").text
    assert "you labelled 1 afterwards" in counts and outcome in counts, counts
    shoot(driver, shots, "corrections")


def test_another_user_cannot_open_the_message_by_url(driver: WebDriver, site: Site) -> None:
    own = [s for s in site.messages["alice"] if s not in site.messages["bob"] and s != site.hostile]
    assert own, "the fixture gave alice no mail of her own"
    log_in(driver, site, "alice")
    driver.get(f"{site.url}/mail/{own[0]}")
    subject = driver.find_element(By.TAG_NAME, "h1").text
    assert status(driver) == 200 and subject and "Error" not in driver.title, subject

    log_in(driver, site, "bob")
    for sha in (own[0], site.hostile):
        driver.get(f"{site.url}/mail/{sha}")
        assert status(driver) == 404
        assert "no message" in by_id(driver, "error").text
        page = driver.page_source
        assert subject not in page and "bold" not in page and "lottery" not in page
        assert driver.find_elements(By.ID, "mark-spam") == []
    assert own[0] not in driver.page_source


def _version_status(driver: WebDriver, version: int) -> str:
    return driver.find_elements(By.CSS_SELECTOR, f"tr#version-{version} td")[1].text


def test_admin_rolls_back_to_an_older_version(driver: WebDriver, site: Site, shots: Path) -> None:
    log_in(driver, site, "root")
    assert driver.current_url == site.url + "/admin"
    users = [tr.find_elements(By.TAG_NAME, "td")[0].text
             for tr in driver.find_elements(By.CSS_SELECTOR, "table#users tr")[1:]]
    assert {"alice", "bob"} <= set(users)
    assert (_version_status(driver, 1), _version_status(driver, 2)) == ("retired", "active")
    assert len(driver.find_elements(By.CSS_SELECTOR, "figure.chart svg")) == 3
    assert driver.find_elements(By.ID, "activate-2") == []  # the active version has no button
    shoot(driver, shots, "admin")

    click_through(driver, by_id(driver, "activate-1"))
    assert by_id(driver, "activated").text == "Model version 1 is now active."
    assert (_version_status(driver, 1), _version_status(driver, 2)) != ("retired", "active")
    assert _version_status(driver, 1) == "active"
    assert run_sql(site.db, "SELECT id FROM model_versions WHERE status = 'active'") == [(1,)]
    shoot(driver, shots, "admin-rolled-back")

    click_through(driver, by_id(driver, "activate-2"))  # and forward again, for the tests after this one
    assert _version_status(driver, 2) == "active"
    assert run_sql(site.db, "SELECT id FROM model_versions WHERE status = 'active'") == [(2,)]


def test_message_html_shows_as_text_and_runs_nothing(driver: WebDriver, site: Site) -> None:
    log_in(driver, site, "alice")
    driver.get(f"{site.url}/mail/{site.hostile}")
    assert status(driver) == 200
    # None of the message's markup became elements (the pages have no script of their own at all) ...
    assert driver.execute_script("return document.scripts.length") == 0
    main = driver.find_element(By.TAG_NAME, "main")
    assert main.find_elements(By.TAG_NAME, "img") == []
    assert driver.find_element(By.TAG_NAME, "h1").find_elements(By.TAG_NAME, "b") == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - an alert() from the message would be open here
    # ... it reads as the text it is.
    assert driver.find_element(By.TAG_NAME, "h1").text == "<b>bold</b> offer"
    text = by_id(driver, "text").text
    assert '<script>alert("x")</script><img src="http://tracker.example/p.gif">' in text


def test_log_out_ends_the_session(driver: WebDriver, site: Site) -> None:
    log_in(driver, site, "bob")
    assert driver.get_cookie("spamtl_token") is not None
    click_through(driver, driver.find_element(By.CSS_SELECTOR, "header form button"))
    assert driver.current_url == site.url + "/login"
    assert driver.get_cookie("spamtl_token") is None
    assert "Log out" not in driver.find_element(By.TAG_NAME, "header").text and by_id(driver, "token")
    driver.get(site.url + "/mail")
    assert driver.current_url == site.url + "/login?next=/mail"
    assert driver.find_elements(By.ID, "verdicts") == []
