"""Build the ``cpldask_test`` CPL recipe used by the cpldask test suite.

Usage from Python::

    from tests.testrecipe.build import build
    so = build(tmp_path)          # -> tmp_path / "cpldask_test.so"

or from the command line::

    python tests/testrecipe/build.py OUTDIR

The recipe is compiled with gcc against the CPL headers/libraries installed
on the system (Debian: ``libcpl-dev``; headers in /usr/include, no pkg-config
files).  pkg-config is used when it knows about CPL, otherwise the plain
``-lcplcore -lcplui -lcpldfs`` flags are used (plus ``-I/usr/include/cpl`` if
that directory exists).  ``CC``, ``CFLAGS`` and ``LDFLAGS`` environment
variables are honoured.  The library is only rebuilt when it is missing or
older than the C source (or this script), or was built with other ``defines``.

``build(outdir, defines={"CPLDASK_TEST_FILL_OFFSET": 100})`` builds a variant whose
products differ and whose version string does not: what a pipeline developer's
rebuild looks like to cpldask (tests of the product cache).
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

__all__ = ["SOURCE", "LIBNAME", "RECIPE_NAME", "build", "compile_flags"]

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "cpldask_test.c"
LIBNAME = "cpldask_test.so"
RECIPE_NAME = "cpldask_test"

_PKG_MODULES = ("cplcore", "cplui", "cpldfs")
_FALLBACK_LIBS = ["-lcpldfs", "-lcplui", "-lcplcore"]


def compile_flags() -> tuple[list[str], list[str]]:
    """Return ``(cflags, libs)`` for compiling against CPL."""
    pkg_config = shutil.which("pkg-config")
    if pkg_config is not None:
        try:
            cflags = subprocess.run(
                [pkg_config, "--cflags", *_PKG_MODULES],
                check=True, capture_output=True, text=True,
            ).stdout
            libs = subprocess.run(
                [pkg_config, "--libs", *_PKG_MODULES],
                check=True, capture_output=True, text=True,
            ).stdout
            return shlex.split(cflags), shlex.split(libs)
        except (subprocess.CalledProcessError, OSError):
            pass  # no .pc files (the Debian case): fall back to plain flags
    cflags = []
    for inc in ("/usr/include/cpl", "/usr/local/include/cpl"):
        if os.path.isfile(os.path.join(inc, "cpl.h")):
            cflags.append("-I" + inc)
            break
    return cflags, list(_FALLBACK_LIBS)


def _stamp(target: pathlib.Path) -> pathlib.Path:
    """Beside the library: the -D flags it was built with."""
    return target.with_name(target.name + ".defines")


def _up_to_date(target: pathlib.Path, flags: list[str]) -> bool:
    if not target.exists():
        return False
    stamp = _stamp(target)
    if (stamp.read_text().split() if stamp.exists() else []) != flags:
        return False
    mtime = target.stat().st_mtime
    return all(mtime >= dep.stat().st_mtime
               for dep in (SOURCE, pathlib.Path(__file__).resolve()))


def build(outdir: pathlib.Path, defines: dict | None = None) -> pathlib.Path:
    """Compile the test recipe into ``outdir/cpldask_test.so``.

    ``defines`` become ``-DNAME=VALUE`` flags. Returns the path of the shared
    library.  Does nothing if the library is newer than the source and was built
    with the same defines.  Raises :class:`RuntimeError` (with the compiler
    command and output) if compilation fails or no compiler is available.
    """
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / LIBNAME
    flags = [f"-D{name}={value}" for name, value in sorted((defines or {}).items())]
    if _up_to_date(target, flags):
        return target

    cc = shlex.split(os.environ.get("CC", "gcc"))
    if shutil.which(cc[0]) is None:
        raise RuntimeError(f"cannot build {LIBNAME}: compiler {cc[0]!r} "
                           "not found")
    cflags, libs = compile_flags()
    extra_cflags = shlex.split(os.environ.get("CFLAGS", ""))
    extra_ldflags = shlex.split(os.environ.get("LDFLAGS", ""))

    # Compile to a temporary file in outdir, then rename atomically, so that
    # concurrent builds (e.g. pytest-xdist workers) never see a partial .so.
    fd, tmpname = tempfile.mkstemp(prefix=".cpldask_test.", suffix=".so",
                                   dir=outdir)
    os.close(fd)
    tmp = pathlib.Path(tmpname)
    # -fopenmp: the recipe links the OpenMP runtime, like the MUSE recipes, so the
    # tests can see which OMP_NUM_THREADS it was loaded with
    cmd = [*cc, "-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-fopenmp",
           "-shared", "-fPIC", *cflags, *extra_cflags, *flags,
           "-o", str(tmp), str(SOURCE), *extra_ldflags, *libs]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"building {LIBNAME} failed (exit code {proc.returncode})\n"
                f"command: {shlex.join(cmd)}\n"
                f"--- compiler output ---\n{proc.stdout}{proc.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        _stamp(target).write_text(" ".join(flags))
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(f"usage: {sys.argv[0]} OUTDIR", file=sys.stderr)
        return 2
    try:
        path = build(pathlib.Path(argv[0]))
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
