"""The run page in a real browser (headless Chromium): every image decodes, no request leaves the file, no
console error, and the text a reader sees holds the run's mIoU and its class names.

Needs Debian's `chromium` (`make chromium`, run by `make test`) and the `websockets` package (dev extra);
skips with the reason when either is missing. TRASH_SCREENSHOTS=DIR keeps the screenshot for a person to read.
"""

import json
import os
from pathlib import Path

import pytest

from app.report.build import write_report
from tests.report.browser import browser, open_page


@pytest.fixture(scope="module")
def seen(trained_run, tmp_path_factory):
    if browser() is None:
        pytest.skip("no chromium: install it with `apt-get install -y chromium` (make chromium) to run browser tests")
    pytest.importorskip("websockets", reason="the browser tests talk to chromium through `websockets` (dev extra)")
    page = write_report([trained_run], tmp_path_factory.mktemp("page") / "report.html")
    return open_page(page, width=1400)


def test_every_image_decodes(seen):
    assert seen.images, "the page shows no image"
    broken = [alt for complete, width, height, alt in seen.images if not complete or width == 0 or height == 0]
    assert broken == []


def test_no_network_request_and_no_console_error(seen):
    assert seen.requests  # the browser reported the page's own loads, so an empty `network` means something
    assert seen.network == []
    assert seen.errors == []


def test_the_text_holds_the_runs_miou_and_class_names(seen, trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert f"{metrics['miou']:.4f}" in seen.text
    classes = json.loads((trained_run / "resolved.json").read_text())["classes"]
    assert all(name in seen.text for name in classes)


def test_the_screenshot_is_the_page_at_1400_px(seen, tmp_path):
    import cv2
    import numpy as np

    shot = cv2.imdecode(np.frombuffer(seen.screenshot, np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape[1] == 1400 and shot.shape[0] > 1000
    assert shot.std() > 10  # not a blank page
    keep = os.environ.get("TRASH_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / "run_report.png").write_bytes(seen.screenshot)
    else:
        (tmp_path / "run_report.png").write_bytes(seen.screenshot)


def test_the_checks_see_a_bad_page(seen, tmp_path):
    """A broken image, a request to the network and a console error are each seen (the checks can fail)."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><img alt="broken" src="data:image/png;base64,AAAA">'
        '<img alt="remote" src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body></html>'
    )
    found = open_page(bad, width=800)
    assert {alt for complete, width, _, alt in found.images if width == 0} == {"broken", "remote"}
    assert found.network == ["http://127.0.0.1:9/x.png"]
    assert any("boom" in e for e in found.errors)
