"""Issue 22, part 2: ``cpldask report OUT_DIR`` / ``Reduction.report()`` — one
self-contained HTML page of an output folder.

The page is checked as a reader sees it, in headless Chromium (tests/helpers.py's
``Browser``): no console error, every image decoded, one section per step. The data
are real: the 2-IFU MUSE demo cascade of tests/test_reduce.py (the session's
``demo_run``, no second cascade) and, for what the cascade never shows (an outlier
among 6 IFUs, a failed call, a call still running), the C test recipe.
"""

from __future__ import annotations

import html
import re
import time

import numpy as np
import pytest

from cpldask import report
from helpers import CHROMIUM, Browser


def sections(page: str) -> list[str]:
    """The step labels of the page's step sections, in order."""
    return [html.unescape(m) for m in re.findall(r'<section class="step [^"]*" id="[^"]*" '
                                                 r'data-step="([^"]*)"', page)]


def section(page: str, label: str) -> str:
    start = page.rindex("<section", 0, page.index(f'data-step="{html.escape(label)}"'))
    return page[start:page.index("</section>", start)]


# -- the fast tier: no CPL --------------------------------------------------------------
def test_outlier_rule_is_three_standard_deviations_of_a_normal_distribution():
    """1.4826 x MAD is the standard deviation of normally distributed values, so 3
    robust sigma flags the two-sided 3-sigma tail: 0.27 % (erfc(3/sqrt 2))."""
    import math

    rng = np.random.default_rng(22)
    values = rng.normal(10.0, 2.0, 200_000)
    expected = math.erfc(3 / math.sqrt(2))
    assert abs(report.outliers(values).mean() - expected) < 0.0005
    # one bad IFU among 24
    assert report.outliers([1.0] * 12 + [1.02] * 11 + [9.0]).tolist() == [False] * 23 + [True]
    # counts where most are equal (MAD 0): 92 among 93s is no outlier, 5 among 0s is
    assert not report.outliers([93] * 30 + [92] * 18).any()
    assert report.outliers([0] * 23 + [5]).tolist() == [False] * 23 + [True]
    assert not report.outliers([1.0, 9.0, 1.0, 1.0]).any()  # too few to tell


def test_an_empty_or_missing_folder_is_refused_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="output_dir of a reduction"):
        report.write_report(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"no provenance record \(\*\.provenance\.json\)"):
        report.write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


# -- the C test recipe: outliers, a failure, a call still running ------------------------
@pytest.mark.requires_cpl
def test_outliers_failures_and_running_calls_of_real_calls(test_recipe, any_fits, tmp_path):
    out = tmp_path / "out"
    values = [1.0, 1.1, 0.9, 1.0, 1.05, 9.0]  # IFU 6 is off
    runs = [test_recipe(any_fits, param={"value": v, "nproducts": 1}, threaded=True,
                        output_dir=out / "cpldask_test" / f"ifu{k:02d}")
            for k, v in enumerate(values, start=1)]
    bad = test_recipe(any_fits, param={"fail": True}, threaded=True,
                      output_dir=out / "cpldask_test" / "ifu07")
    slow = test_recipe(any_fits, param={"sleep": 300.0}, threaded=True,
                       output_dir=out / "cpldask_test" / "ifu08")
    try:
        for r in runs:
            r.result()
        err = bad.exception()
        assert err is not None
        # the running call's directory appears once the worker has started it
        deadline = time.monotonic() + 60
        while not list(out.glob("cpldask_test/ifu08/.cpldask-tmp/*/.cpldask-job.json")):
            assert time.monotonic() < deadline, "the sleeping call did not start"
            time.sleep(0.1)
        labels = [f"cpldask_test[{k}]" for k in range(1, 10)]
        page_path = report.write_report(out, tmp_path / "r.html",
                                        failed={"cpldask_test[7]": err}, planned=labels)
    finally:
        slow.cancel()
    page = page_path.read_text()
    assert sorted(sections(page)) == sorted(labels)
    # the outlier: red in IFU 6's QC table, plotted against 6 IFUs, listed
    # (not the only one: ECHO TSTART, TEND and PID differ from call to call as well)
    row = "<tr><td>ESO QC ECHO VALUE</td><td>{}</td></tr>"
    assert row.format('<span class="out">9</span>') in section(page, "cpldask_test[6]")
    assert row.format("1.1") in section(page, "cpldask_test[2]")
    assert 'alt="QC of cpldask_test"' in page
    # the failure: its CPL error and the recipe's log
    failed = section(page, "cpldask_test[7]")
    assert 'class="step failed"' in failed and "failure requested" in failed
    assert "CplError" in failed
    assert 'class="step running"' in section(page, "cpldask_test[8]")
    assert 'class="step not-run"' in section(page, "cpldask_test[9]")
    # each product with its PRO CATG, the inputs with their hashes
    first = section(page, "cpldask_test[1]")
    assert "PRODUCT_0000.fits" in first and "<td>PRODUCT</td>" in first
    assert runs[0].provenance["inputs"][0]["hash"] in first


@pytest.mark.requires_cpl
def test_command_line(test_recipe, any_fits, tmp_path, capsys):
    from cpldask._cli import handle_args

    test_recipe(any_fits, output_dir=tmp_path / "out").result()
    assert handle_args(["report", str(tmp_path / "out"), "-o", str(tmp_path / "r.html")]) == 0
    assert str(tmp_path / "r.html") in capsys.readouterr().out
    assert sections((tmp_path / "r.html").read_text()) == ["cpldask_test"]
    assert handle_args(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# -- the MUSE cascade, in a browser -----------------------------------------------------------
@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_report_of_the_muse_cascade_in_chromium(demo_run, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (ci/install-system.sh installs it)")
    red, _, work = demo_run
    t0 = time.monotonic()
    page_path = red.report(tmp_path / "report.html")
    took = time.monotonic() - t0
    page = page_path.read_text()
    size = page_path.stat().st_size
    print(f"report of {len(red.steps)} steps: {size / 1024:.0f} kB in {took:.1f} s")
    # self-contained: no address the browser would fetch
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page and "<link" not in page
    labels = [s.label for s in red.steps]
    # one section per step (test_reduce's chaos test may have left recomputed copies,
    # shown as '<label> run 2')
    shown = sections(page)
    assert set(labels) <= set(shown)
    assert all(s in labels or s.split(" run ")[0] in labels for s in shown)
    for step in red.steps:
        part = section(page, step.label)
        for paths in step.result.paths.values():
            for p in paths:
                assert p.rsplit("/", 1)[-1] in part
        assert step.result.record.worker in part
    # a zscale image of each master calibration, the twilight cube, ILLUM, IMAGE_FOV
    masters = [p for s in red.steps for t, ps in s.result.paths.items()
               if t.startswith("MASTER_") for p in ps]
    assert len(masters) == 6
    for p in masters:
        assert f'alt="{p.rsplit("/", 1)[-1].split("-")[0]} {p.rsplit("/", 1)[-1]}"' in page
    assert 'alt="TWILIGHT_CUBE TWILIGHT_CUBE.fits"' in page
    assert 'alt="spectra of DATACUBE_FINAL.fits"' in page
    assert 'alt="QC of muse_wavecal"' in page and 'alt="timeline of the recipe calls"' in page
    # the same page from the folder alone (no Reduction: no failures, no plan)
    again = sections(report.write_report(work / "reduced", tmp_path / "alone.html").read_text())
    assert again == shown
    with Browser(width=1400, height=2000) as browser:
        browser.load(page_path.as_uri())
        assert browser.console_errors() == []
        images = browser.evaluate("[...document.images].map(i => [i.alt, i.naturalWidth])")
        assert len(images) >= 6 + 2 + 1 + 1 + 3  # masters, ILLUM, twilight, fov, plots
        assert [alt for alt, width in images if width == 0] == []
        rendered = browser.evaluate("[...document.querySelectorAll('section.step')]"
                                    ".map(s => s.dataset.step)")
        assert rendered == shown
        assert browser.evaluate("document.body.scrollHeight") > 5000
        # the checks can fail: an error and an undecodable image are seen
        browser.evaluate("console.error('seen'); const i = new Image(); "
                         "i.src = 'data:image/png;base64,AAAA'; document.body.append(i); 0")
        browser.wait_for("[...document.images].every(i => i.complete)")
        assert browser.console_errors() == ["seen"]
        assert browser.evaluate("[...document.images].filter(i => !i.naturalWidth).length") == 1
