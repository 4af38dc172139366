"""Call keys: the digests that name a call's task and its product-cache entry, and the
checksums of its inputs — the fast tier, no recipe runs, no python-cpl.

A content key must be the same in every session and on every machine (the product
cache is shared between them), and must change whenever what the recipe would see
changes: every byte of an input counts, not the DATAMD5 keyword it carries (issue 17).
The functions live in cpldask/_hashing.py, which imports nothing but xxhash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import xxhash

from cpldask import _hashing


def _digest(value):
    return _hashing.digest(value)


def _checksum(path):
    return _hashing.file_hash(str(path))


def test_digest_is_the_xxh3_of_compact_sorted_json():
    # the form is part of the cache's format: changing it orphans every cached product
    value = {"recipe": "muse_bias", "params": [["nifu", 1]], "env": {"B": "2", "A": "1"}}
    text = '{"env":{"A":"1","B":"2"},"params":[["nifu",1]],"recipe":"muse_bias"}'
    assert _digest(value) == xxhash.xxh3_128_hexdigest(text.encode())
    assert _digest({"b": 1, "a": 2}) == _digest({"a": 2, "b": 1})


def test_digest_tells_apart_values_python_calls_equal():
    # 1 == 1.0 == True in Python, but a recipe parameter of another type is another call
    keys = {_digest(v) for v in (1, 1.0, True, "1", [1], None)}
    assert len(keys) == 6


def test_digest_is_the_same_in_another_process():
    value = {"inputs": [["BIAS", "0f" * 16]], "params": {"combine": "sigclip", "nifu": 3},
             "env": {"OMP_NUM_THREADS": "2"}}
    code = ("import sys, json; from cpldask._hashing import digest; "
            "print(digest(json.loads(sys.argv[1])))")
    # string hashing differs there (this process's seed is random, PYTHONHASHSEED=0
    # turns it off): a digest must not depend on it
    out = subprocess.run([sys.executable, "-c", code, json.dumps(value)],
                         env={**os.environ, "PYTHONHASHSEED": "0"}, text=True,
                         capture_output=True, check=True, timeout=60).stdout.strip()
    assert out == _digest(value)


def _fits(path, *, datamd5=None, fill=0.0):
    header = fits.Header()
    if datamd5 is not None:
        header["DATAMD5"] = datamd5
    fits.PrimaryHDU(np.full((4, 4), fill, np.float32), header=header).writeto(
        path, overwrite=True)
    return path


def _md5(path):  # (the name the tests below had: the hash of every byte)
    return xxhash.xxh3_128_hexdigest(path.read_bytes())


def test_checksum_is_every_byte_not_the_datamd5_keyword(tmp_path):
    # DATAMD5 covers the data only and stays stale after an edit in place: evidence,
    # not proof. Two files with the same keyword and other pixels hash apart.
    one = _fits(tmp_path / "one.fits", datamd5="a" * 32, fill=1.0)
    two = _fits(tmp_path / "two.fits", datamd5="a" * 32, fill=2.0)
    assert _checksum(one) == _md5(one) != _checksum(two) == _md5(two)
    text = tmp_path / "catalog.txt"
    text.write_text("not FITS at all\n")
    assert _checksum(text) == _md5(text)


def test_checksum_follows_a_file_rewritten_in_place(tmp_path):
    path = _fits(tmp_path / "raw.fits", fill=1.0)
    first = _checksum(path)
    stat = os.stat(path)
    _fits(path, fill=2.0)  # same size, new content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert os.path.getsize(path) == stat.st_size
    assert _checksum(path) == _md5(path) != first
    # the content is what counts, not the file's name
    copy = tmp_path / "copy.fits"
    copy.write_bytes(path.read_bytes())
    assert _checksum(copy) == _checksum(path)
