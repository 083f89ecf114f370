"""Shared fixtures. Real-data tests skip with a reason when the data is absent; CI forbids that.

With ``SLIDESCAN_REQUIRE_DATA=1`` (set by ``.ci/run``) a missing data folder fails the test instead
of skipping it, and any skipped test at all fails the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_paths import ENV_VAR, shared_data_dir

from slidescan.engine.weights import LoadedModel, load_weights
from slidescan.errors import SlidescanError

REQUIRE_ENV = "SLIDESCAN_REQUIRE_DATA"
# Set by .ci/run: test the installed wheel, never the source tree.
INSTALLED_ENV = "SLIDESCAN_TEST_INSTALLED"
CHECKOUT = Path(__file__).resolve().parents[1]
WEIGHTS_ENV = "SLIDESCAN_TEST_WEIGHTS"


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def pytest_report_header(config: pytest.Config) -> str:
    import slidescan

    return f"slidescan under test: {slidescan.__file__}"


def pytest_configure(config: pytest.Config) -> None:
    """Under SLIDESCAN_TEST_INSTALLED=1, refuse to test the source tree instead of the wheel."""
    import slidescan

    package = Path(slidescan.__file__).resolve()
    required = os.environ.get(INSTALLED_ENV, "") not in ("", "0")
    if required and package.is_relative_to(CHECKOUT / "slidescan"):
        raise pytest.UsageError(
            f"{INSTALLED_ENV}=1 but slidescan is imported from the checkout ({package}): "
            "run `pytest`, not `python -m pytest`, from an environment with the wheel installed"
        )


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder (../shared/data or $SLIDESCAN_DATA); skips the test when absent."""
    path = shared_data_dir()
    if not (path / "pcam-jpeg").is_dir():
        reason = f"real data not found at {path} (set {ENV_VAR} to the shared data folder)"
        if _required():
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 forbids skipping")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def shipped() -> LoadedModel:
    """The shipped model, or the weights file named by $SLIDESCAN_TEST_WEIGHTS (e.g. one being
    trained, before it is shipped)."""
    override = os.environ.get(WEIGHTS_ENV)
    try:
        return load_weights(Path(override)) if override else load_weights()
    except SlidescanError as exc:
        if "not found" not in str(exc):
            raise
        reason = f"{exc} (train the shipped model, or set {WEIGHTS_ENV})"
        if _required():
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded, untrained pcamnet-s weights at the model's 0.972 µm/px: fast scans of synthetic
    slides, where only the pipeline is under test, not the model's answers."""
    from scan_helpers import write_untrained_weights

    return write_untrained_weights(tmp_path_factory.mktemp("weights") / "w.pt")


@pytest.fixture(scope="session", autouse=True)
def every_report_matches_the_schema(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """After the session, every slide report any test wrote (in-process or by a CLI run) must
    validate against the JSON Schema shipped in the package."""
    yield
    import json

    import jsonschema

    from slidescan.report.slide_report import report_schema

    validator = jsonschema.Draft202012Validator(report_schema())
    checked, bad = 0, []
    for path in tmp_path_factory.getbasetemp().rglob("*.json"):
        if not path.with_suffix(".zarr").exists():
            continue  # a slide report sits beside its heatmap
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not (isinstance(data, dict) and "fingerprint" in data and "call" in data):
            continue  # not a slide report
        checked += 1
        errors = [e.message for e in validator.iter_errors(data)]
        if errors:
            bad.append(f"{path}: {errors[:3]}")
    assert not bad, f"{len(bad)} of {checked} slide reports break the schema:\n" + "\n".join(bad)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under SLIDESCAN_REQUIRE_DATA, a run that skipped anything is a failed run."""
    if not _required():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"{skipped} test(s) skipped but {REQUIRE_ENV}=1: failing the run")
