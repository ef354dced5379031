"""The run's HTML report in a real browser: headless Chromium from Debian's `chromium` package
(`apt-get install -y chromium`; .ci/run installs it), driven over the DevTools protocol with the network
off (tests/chromium.py), on a small finished run of the default loop made without a model
(tests/report_fixture.py). Marked `browser`: deselected by default, `pytest -m browser` runs it."""

from __future__ import annotations

import json

import pytest

from chromium import Chromium, available
from report_fixture import RUN, counts, make_run

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")]
READY = "document.body !== null && document.body.dataset.ready === 'true'"
COUNT = "JSON.stringify(Object.assign({}, document.getElementById('records-count').dataset))"


def _shown(browser) -> dict:
    return {key: int(value) for key, value in json.loads(browser.evaluate(COUNT)).items()}


def _filter(browser, text: str) -> None:
    before = browser.evaluate("document.getElementById('records-count').textContent")
    browser.evaluate(f"(() => {{ const box = document.getElementById('records-filter'); box.value = {text!r}; "
                     "box.dispatchEvent(new Event('input')); return true; })()")
    browser.wait_for(f"document.getElementById('records-count').textContent !== {before!r}")


def test_the_report_opens_offline_with_no_error_and_browses_the_records(tmp_path):
    root = make_run(tmp_path / "project")
    page = root / "runs" / RUN / "report.html"
    with Chromium() as browser:
        browser.open(page.as_uri(), ready=READY)
        assert browser.evaluate("document.title") == f"{RUN}: selfimprove report"
        # Iteration 1 first: its prompts, samples and pairs, a page of rows at most.
        assert _shown(browser) == counts(root, 1)
        assert browser.evaluate("document.getElementById('records-body').children.length") == counts(root, 1)["prompts"]
        assert browser.evaluate("window.injected === undefined")  # a hostile completion stayed text
        # The filter narrows it: one prompt by its question, then one prompt by id across iterations.
        _filter(browser, "3+1=")
        assert _shown(browser) == {"prompts": 1, "samples": 4, "pairs": 1}
        browser.evaluate("document.querySelector('#records-body button.id').click(), true")
        assert _shown(browser) == {"prompts": 2, "samples": 8, "pairs": 2}  # prompt 3 in iterations 1 and 2
        assert browser.evaluate("document.getElementById('records-iteration').value") == "all"
        browser.evaluate("document.querySelector('#records-body button.samples').click(), true")
        assert browser.evaluate("document.querySelectorAll('tr.samples-row table.inner tr').length") == 4
        shot = browser.screenshot(full_page=True)
        problems = browser.problems()
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
    (tmp_path / "report.png").write_bytes(shot)
    assert not problems, problems
