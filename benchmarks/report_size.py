"""The run's HTML report: its size, the time to write it, and the time it takes to open in headless
Chromium (Debian's `chromium` package, network off; tests/chromium.py) until its records table is drawn,
and to filter that table. Target: a page that stays usable at 10^5 samples.

    python benchmarks/report_size.py                      # the default loop's run in this project: runs/scpo
    python benchmarks/report_size.py --project DIR --run RUN
    python benchmarks/report_size.py --synthetic 100000   # a made-up run of the default loop with that many samples
    python benchmarks/report_size.py --screenshot docs/assets/report-scpo.png --at records   # docs/results.md's

Prints one line per measured page: samples, size in MB, seconds to write it, seconds to open it (best of
--repeat), seconds for a filter to redraw the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the browser driver and the run fixture the tests use

READY = "document.body !== null && document.body.dataset.ready === 'true'"


def measure(project: Path, run: str, repeat: int, screenshot: Path | None = None, at: str | None = None) -> dict:
    from chromium import Chromium

    from selfimprove.results import report

    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / f"{run}.html"
        started = time.monotonic()
        report.write(project, run, page)
        written = time.monotonic() - started
        samples = Path(page).read_text().count('"completion":')
        opened, filtered = [], []
        for _ in range(repeat):
            with Chromium() as browser:  # a fresh browser each time: no cache between the tries
                opened.append(browser.open(page.as_uri(), ready=READY))
                before = browser.evaluate("document.getElementById('records-count').textContent")
                started = time.monotonic()
                browser.evaluate("(() => { const box = document.getElementById('records-filter'); box.value = '#### 1'; "
                                 "box.dispatchEvent(new Event('input')); return true; })()")
                browser.wait_for(f"document.getElementById('records-count').textContent !== {before!r}")
                filtered.append(time.monotonic() - started - 0.12)  # less the filter box's 120 ms debounce
                problems = browser.problems()
                if screenshot:  # the first page of the table, or the top of the page
                    browser.evaluate("(() => { const box = document.getElementById('records-filter'); box.value = ''; "
                                     "box.dispatchEvent(new Event('input')); return true; })()")
                    browser.wait_for(f"document.getElementById('records-count').textContent === {before!r}")
                    if at:
                        browser.evaluate(f"document.getElementById({at!r}).scrollIntoView(), true")
                    screenshot.write_bytes(browser.screenshot())
            if problems:
                raise SystemExit(f"the page had problems: {problems}")
        return {"samples": samples, "mb": page.stat().st_size / 1e6, "write_s": written, "open_s": min(opened),
                "filter_s": min(filtered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--run", default="scpo")
    parser.add_argument("--synthetic", type=int, metavar="SAMPLES", help="measure a made-up run of this many samples "
                        "(8 per prompt, one iteration) instead")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, help="also save a PNG of the page (1280 x 900) here")
    parser.add_argument("--at", metavar="SECTION", help="the section the screenshot shows (metrics, training, "
                        "costs, pairs, records, settings); default: the top")
    args = parser.parse_args()
    if args.synthetic:
        from report_fixture import RUN, make_run

        with tempfile.TemporaryDirectory() as scratch:
            project = make_run(Path(scratch), iterations=1, prompts=args.synthetic // 8, n=8)
            figures = measure(project, RUN, args.repeat, args.screenshot, args.at)
    else:
        figures = measure(args.project, args.run, args.repeat, args.screenshot, args.at)
    print(f"{figures['samples']} samples: {figures['mb']:.2f} MB, written in {figures['write_s']:.2f} s, "
          f"opened in {figures['open_s']:.2f} s (best of {args.repeat}), "
          f"a filter redraws in {figures['filter_s']:.3f} s")


if __name__ == "__main__":
    main()
