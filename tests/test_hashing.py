"""Issue 17: content hashes, remembered per file identity (no cluster, no recipe)."""

from __future__ import annotations

import os
import time

import pytest
import xxhash

from cpldask import _hashing


def wait_until_old() -> None:
    """Let a file just written grow older than _hashing.YOUNG, as a dataset's are."""
    time.sleep(2 * _hashing.YOUNG / 1e9)


def test_an_edit_in_place_is_seen_even_with_the_mtime_put_back(tmp_path):
    """Same size, same mtime (``touch -d`` / os.utime put it back): the ctime, which
    no call can set, still tells the files apart."""
    path = tmp_path / "frame.fits"
    path.write_bytes(b"A" * 5000)
    wait_until_old()
    before = _hashing.file_hash(str(path))
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"B")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    assert _hashing.file_hash(str(path)) != before
    assert _hashing.file_hash(str(path)) == xxhash.xxh3_128(path.read_bytes()).hexdigest()


def test_only_files_old_enough_are_remembered(tmp_path):
    path = tmp_path / "young.fits"
    path.write_bytes(b"x" * 100)
    _hashing.file_hash(str(path))
    assert _hashing._MEMO.get(_hashing.identity(path.stat())) is None  # just written
    wait_until_old()
    digest = _hashing.file_hash(str(path))
    assert _hashing._MEMO.get(_hashing.identity(path.stat())) == digest


def test_the_memory_of_hashes_is_bounded():
    lru = _hashing.LRU(3)
    for i in range(5):
        lru.put(i, str(i))
    assert len(lru) == 3 and lru.get(0) is None and lru.get(4) == "4"
    lru.get(2)  # used: kept over 3
    lru.put(5, "5")
    assert lru.get(3) is None and lru.get(2) == "2"


def test_several_files_at_once_hash_as_one_by_one(tmp_path):
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"f{i}"))
        with open(paths[-1], "wb") as f:
            f.write(os.urandom(3 * _hashing.BLOCK + i))
    _hashing._MEMO.clear()
    together = _hashing.file_hashes(paths)
    assert together == [xxhash.xxh3_128(open(p, "rb").read()).hexdigest() for p in paths]


def test_digest_is_the_same_in_every_session():
    """A cache key must not depend on the process: no Python hash(), no dict order."""
    assert _hashing.digest({"b": [1, 1.0, True], "a": "x"}) == \
        _hashing.digest({"a": "x", "b": [1, 1.0, True]})
    assert _hashing.digest([1]) != _hashing.digest([1.0]) != _hashing.digest([True])
    assert _hashing.digest({"a": 1}) == xxhash.xxh3_128_hexdigest(b'{"a":1}')


@pytest.mark.requires_cpl
def test_the_libraries_a_recipe_loads(testrecipe_dir):
    libs = _hashing.shared_libraries(str(testrecipe_dir / "cpldask_test.so"))
    names = {os.path.basename(p).split(".so")[0] for p in libs}
    assert {"libcplcore", "libcplui", "libcpldfs", "libc"} <= names


def _installed(tmp_path, name: str, data: bytes, since: float, out):
    from cpldask._spec import Product
    from cpldask.worker import install

    call = tmp_path / f"call{time.monotonic_ns()}"
    call.mkdir()
    (call / name).write_bytes(data)
    product = Product("PRODUCT", str(call / name), len(data), {})
    [got] = install.install_products([product], out, since, provenance={})
    return got.path


@pytest.mark.requires_python_cpl  # cpldask.worker.install raises python-cpl's errors
def test_a_product_installed_again_with_the_same_bytes_is_not_copied(tmp_path):
    """A lost result recomputed from the cache installs the bytes it installed before
    into the same output_dir: it points at that file again, with no numbered copy
    (the report test after the chaos test found MASTER_BIAS-01-1.fits); a concurrent
    call's different bytes still get a numbered name of their own."""
    out = tmp_path / "out"
    out.mkdir()
    since = time.time() - 1.0  # both calls made before the first install
    first = _installed(tmp_path, "P.fits", b"x" * 2880, since, out)
    again = _installed(tmp_path, "P.fits", b"x" * 2880, since, out)
    other = _installed(tmp_path, "P.fits", b"y" * 2880, since, out)
    assert again == first == str(out / "P.fits")
    assert other == str(out / "P-1.fits")
    assert sorted(p.name for p in out.glob("*.fits")) == ["P-1.fits", "P.fits"]
    assert (out / "P.fits").read_bytes() == b"x" * 2880
