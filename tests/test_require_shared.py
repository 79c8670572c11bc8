"""`conftest.require_shared`: tests that need ../shared skip with a reason locally, but FAIL under
CI (CI=true), where the shared data is always present, so a lost copy cannot hide as skips."""
import pytest

from tests import conftest
from tests.conftest import require_shared


def outcome(function):
    """'passed', 'skipped: <reason>' or 'failed: <message>' of calling `function()`."""
    try:
        function()
    except pytest.skip.Exception as e:
        return f"skipped: {e.msg}"
    except pytest.fail.Exception as e:
        return f"failed: {e.msg}"
    return "passed"


def test_a_missing_path_skips_locally_with_its_name(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    missing = tmp_path / "nowhere" / "joints.mat"
    result = outcome(lambda: require_shared(missing, "the LSPET copy"))
    assert result.startswith("skipped: needs the LSPET copy; missing:") and str(missing) in result


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_a_missing_path_fails_under_ci(tmp_path, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    missing = tmp_path / "nowhere" / "joints.mat"
    result = outcome(lambda: require_shared([tmp_path, missing], "the LSPET copy"))
    assert result.startswith("failed: needs the LSPET copy; missing:") and str(missing) in result
    assert "CI" in result


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_ci_unset_or_false_only_skips(tmp_path, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert outcome(lambda: require_shared(tmp_path / "nowhere", "x")).startswith("skipped")


def test_present_paths_pass_with_or_without_ci(tmp_path, monkeypatch):
    (tmp_path / "a").write_text("x")
    for value in ("true", ""):
        monkeypatch.setenv("CI", value)
        assert outcome(lambda: require_shared([tmp_path / "a", tmp_path], "x")) == "passed"
        assert outcome(lambda: require_shared(str(tmp_path / "a"), "x")) == "passed"


def test_the_shared_lspet_copy_is_there():
    """Skips locally without the shared datasets; fails under CI, where they always are."""
    require_shared(conftest.SHARED / "datasets" / "lspet" / "joints.mat", "the shared LSPET copy")
