"""Issue 17: a bad input is refused before any work, with the file named and what is
wrong with it; no task of a refused call reaches the scheduler."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import cpldask

pytestmark = pytest.mark.requires_cpl
from cpldask import errors


@pytest.fixture
def scheduler_untouched(client):
    """Fail the test if any task reached the scheduler while it ran: the scheduler's
    count of task transitions must not move."""
    def transitions():
        return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)

    before = transitions()
    yield
    assert transitions() == before, "a refused call reached the scheduler"


def refused(path, match: str, recipe: str = "cpldask_test", **call):
    with pytest.raises(errors.InputError) as info:
        cpldask.Recipe(recipe)(str(path), **call)
    msg = str(info.value)
    assert str(path) in msg and re.search(match, msg), msg
    return msg


def test_truncated_fits(tmp_path, scheduler_untouched):
    path = tmp_path / "cut.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((100, 100), "f4"), name="CHAN01")]
                 ).writeto(path)
    os.truncate(path, os.path.getsize(path) - 5000)  # a copy that stopped early
    msg = refused(path, "is truncated")
    assert "CHAN01" in msg and "declares 40000 bytes" in msg


def test_truncated_header(tmp_path, scheduler_untouched):
    path = tmp_path / "cut.fits"
    fits.PrimaryHDU(np.zeros((4, 4), "f4")).writeto(path)
    os.truncate(path, 1000)
    refused(path, "header of HDU 0 ends at byte 1000 before its END")


def test_not_fits(tmp_path, scheduler_untouched):
    path = tmp_path / "notes.fits"
    path.write_text("observing notes, not a FITS file\n" * 100)
    refused(path, "is not FITS")


def test_empty_file(tmp_path, scheduler_untouched):
    path = tmp_path / "empty.fits"
    path.touch()
    refused(path, r"is empty \(0 bytes\)")


def test_directory(tmp_path, scheduler_untouched):
    refused(tmp_path, "is a directory")


def test_missing_file(tmp_path, scheduler_untouched):
    refused(tmp_path / "nothere.fits", "does not exist")


def test_a_calibration_is_checked_too(tmp_path, bias_files, scheduler_untouched):
    bad = tmp_path / "badpix.fits"
    bad.write_bytes(b"\0" * 2880)
    with pytest.raises(errors.InputError, match=f"input BADPIX_TABLE file '{bad}' is not FITS"):
        cpldask.Recipe("muse_bias")(bias_files, calib={"BADPIX_TABLE": str(bad)})


_CHECK = """
import sys
from cpldask import _call
try:
    _call.check_file(sys.argv[1], recipe="muse_bias", tag="BIAS")
except Exception as err:
    print(type(err).__name__, err)
"""


def test_unreadable_file(tmp_path):
    """A file its owner may not read. The suite may run as root, who reads anything:
    the check then runs in a process without root's power to ignore permissions
    (util-linux's setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH)."""
    path = tmp_path / "secret.fits"
    fits.PrimaryHDU(np.zeros((2, 2), "f4")).writeto(path)
    path.chmod(0o000)
    if os.geteuid() != 0:
        refused(path, "is not readable; check its permissions", recipe="muse_bias")
        return
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to test permissions as root"
    out = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search",
                          sys.executable, "-c", _CHECK, str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("InputError") and "is not readable" in out.stdout, \
        out.stdout + out.stderr
    assert str(path) in out.stdout


def test_raw_frame_without_the_ifu_of_the_call(bias_files, scheduler_untouched):
    """muse_bias with nifu=2 reads extension CHAN02 of every raw frame; the synthetic
    frames hold IFU 1 only."""
    r = cpldask.Recipe("muse_bias")
    with pytest.raises(errors.InputError) as info:
        r(bias_files, param={"nifu": 2})
    msg = str(info.value)
    assert bias_files[0] in msg and "no extension CHAN02" in msg and "CHAN01" in msg


def test_good_frames_pass_the_checks(tmp_path):
    """What CPL writes, astropy writes, a table and trailing padding all pass."""
    from cpldask import _call

    path = tmp_path / "ok.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 5), "i2"), name="DATA"),
                  fits.BinTableHDU.from_columns([fits.Column("x", "E", array=[1, 2])],
                                                name="TAB")]).writeto(path)
    with open(path, "ab") as f:  # blank records after the last HDU do no harm
        f.write(b"\0" * 2880)
    hdus = _call.check_file(str(path), recipe="r", tag="RAW")
    assert [h["extname"] for h in hdus] == ["PRIMARY", "DATA", "TAB"]
