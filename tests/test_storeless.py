"""The list of tests that ran without a database (tests/conftest.py), which CI's PostgreSQL run
leaves out: a test that had a database open, of its own or a fixture's, must never be on it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = '''
import pytest
from conftest import blank_database

def test_pure():
    assert 1 + 1 == 2

def test_skipped():
    pytest.skip("not here")

def test_failing():
    assert False

def test_own_database(db_url):
    assert db_url

def test_opens_one_itself(tmp_path):
    with blank_database(tmp_path) as url:
        assert url

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with blank_database(tmp_path_factory.mktemp("m")) as url:
        yield url

def test_first_with_shared(shared):
    assert shared

def test_later_while_shared_is_open():
    assert True

'''


def test_the_list_holds_exactly_the_tests_that_passed_with_no_database_open(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_a=TESTS, test_b="def test_after_the_module_closed_its_database():\n    pass\n")
    listed = pytester.path / "storeless.txt"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--record-storeless={listed}")
    result.assert_outcomes(passed=6, skipped=1, failed=1)
    assert listed.read_text().splitlines() == [
        "test_a.py::test_pure", "test_b.py::test_after_the_module_closed_its_database"]

    again = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--deselect-storeless={listed}")
    again.assert_outcomes(passed=4, skipped=1, failed=1, deselected=2)


def test_a_missing_list_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_a="def test_pure():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deselect-storeless=nowhere.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--deselect-storeless: cannot read nowhere.txt*"])
