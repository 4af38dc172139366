"""Reading what a command line names: esorex SOF and rc files, ``NAME=VALUE`` options.

Everything here runs before any work is submitted and raises :class:`UsageError`
with one line that says what is wrong and where; the command line turns it into
exit code 2 (see :mod:`cpldask._cli`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from collections.abc import Iterable, Iterator

from cpl.esorex import load_rc

from ..recipe import Recipe

__all__ = ["UsageError", "bad_input", "Sof", "read_sof", "split_assignment",
           "apply_params", "split_frames", "calib_options"]

#: spellings esorex and python-cpl accept for booleans
_TRUE = {"true", "yes", "on", "1", "t", "y"}
_FALSE = {"false", "no", "off", "0", "f", "n"}


class UsageError(Exception):
    """Bad input on the command line: reported as one line, exit code 2."""


@contextlib.contextmanager
def bad_input() -> Iterator[None]:
    """Turn the client-side validation errors of :class:`cpldask.Recipe` into a
    :class:`UsageError`.

    The Recipe checks names, types, ranges, tags and files before it submits
    anything, and words its exceptions for users; here they only change type. The
    block must hold input handling only: a ``TypeError`` of a real bug elsewhere
    deserves its traceback.
    """
    try:
        yield
    except UsageError:
        raise
    except KeyError as err:
        # str() of a plain KeyError is the repr of its key; the Recipe's own
        # KeyError (UnknownName) has a readable message as its only argument
        raise UsageError(str(err.args[0]) if err.args else str(err)) from err
    except (ValueError, TypeError) as err:  # InputError is a ValueError
        raise UsageError(str(err)) from err
    except OSError as err:
        if err.filename is not None and err.strerror:
            raise UsageError(f"{err.filename}: {err.strerror}") from err
        raise UsageError(str(err)) from err


# -- set-of-frames files -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sof:
    """One esorex set-of-frames file, read and checked.

    Attributes
    ----------
    path : pathlib.Path
        The file as given on the command line.
    frames : tuple of (str, str)
        ``(tag, absolute path)`` in file order.
    """

    path: pathlib.Path
    frames: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """The file name without its suffix: the name of its output folder."""
        return self.path.stem


def read_sof(path: str | os.PathLike) -> Sof:
    """Read an esorex SOF file: one ``PATH TAG [GROUP]`` per line.

    Blank lines and lines starting with ``#`` are skipped; a relative ``PATH`` is
    taken relative to the SOF's own folder, so a SOF and its frames can move
    together. esorex's optional third column (``RAW``/``CALIB``) is accepted and
    ignored: the recipe's declared raw tags decide what is raw.

    Raises
    ------
    UsageError
        Unreadable file, a malformed line, no frames, or a frame file missing.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not a text file"
        raise UsageError(f"cannot read SOF {str(path)!r}: {reason}") from err
    folder = path.parent
    frames = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3):
            raise UsageError(f"{path}:{number}: expected 'PATH TAG' (esorex SOF "
                             f"format), not {line.strip()!r}")
        frame = os.path.abspath(folder / pathlib.Path(fields[0]).expanduser())
        if not os.path.isfile(frame):
            raise UsageError(f"{path}:{number}: frame file {frame!r} does not exist")
        frames.append((fields[1], frame))
    if not frames:
        raise UsageError(f"SOF {str(path)!r} lists no frames")
    return Sof(path, tuple(frames))


def split_frames(recipe: Recipe, frames: Iterable[tuple[str, str]]
                 ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Sort tagged frames into raw frames and calibrations, as esorex does.

    A tag the recipe declares as raw is raw; any other tag must be one of its
    calibration tags. A recipe that declares no frame configuration (many non-MUSE
    recipes) gets every frame as raw, tag and all: esorex hands a recipe one set of
    frames either way, and the recipe sorts them by tag.

    Returns
    -------
    raw, calib : dict
        Paths by tag.
    """
    raw: dict[str, list[str]] = {}
    calib: dict[str, list[str]] = {}
    if recipe.tags is None:
        for tag, path in frames:
            raw.setdefault(tag, []).append(path)
        return raw, calib
    raw_tags = set(recipe.tags)
    calib_tags = {c.tag for c in recipe.calib}
    for tag, path in frames:
        if tag in raw_tags:
            raw.setdefault(tag, []).append(path)
        elif tag in calib_tags:
            calib.setdefault(tag, []).append(path)
        else:
            known = ", ".join(sorted(raw_tags)) or "none"
            cal = ", ".join(sorted(calib_tags)) or "none"
            raise UsageError(f"{recipe.name} does not take frames tagged {tag!r}; "
                             f"raw tags: {known}; calibration tags: {cal}")
    return raw, calib


# -- NAME=VALUE options and rc files --------------------------------------------------
def split_assignment(text: str, what: str) -> tuple[str, str]:
    """``'nifu=1'`` → ``('nifu', '1')``; ``what`` names the option in the message."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"{what} expects NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


def convert(recipe: Recipe, name: str, text: str) -> bool | int | float | str:
    """The value ``text`` typed for the recipe's parameter ``name``.

    Raises
    ------
    UsageError
        Unknown parameter (the message lists the valid ones) or a value that is not
        of the parameter's type.
    """
    with bad_input():
        par = recipe.param[name]
    kind = par.type
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    article = "an" if kind.__name__[0] in "aeiou" else "a"
    raise UsageError(f"{recipe.name}: parameter {par.name!r} takes {article} "
                     f"{kind.__name__}, not {text!r}")


def apply_params(recipe: Recipe, rc_files: Iterable[str | os.PathLike] = (),
                 assignments: Iterable[str] = ()) -> dict[str, object]:
    """Set the recipe's parameters from esorex rc files, then from ``--param``.

    Later settings win, as in esorex: the command line over the rc files, a later rc
    file over an earlier one. Keys of esorex itself (``esorex.caller.*``) in an rc
    file are skipped, so ``~/.esorex/esorex.rc`` can be given as it is.

    Returns
    -------
    dict
        The values set, by the name they were given under.
    """
    settings: list[tuple[str, str, str]] = []  # (name, text, where it came from)
    for rc in rc_files:
        for name, text in _read_rc(rc).items():
            if not name.startswith("esorex."):
                settings.append((name, text, str(rc)))
    for item in assignments:
        name, text = split_assignment(item, "--param")
        settings.append((name, text, "--param"))
    applied = {}
    for name, text, source in settings:
        try:
            value = convert(recipe, name, text)
            with bad_input():
                recipe.param[name] = value  # the Recipe checks range and enum
        except UsageError as err:
            raise UsageError(f"{source}: {err}" if source != "--param" else str(err)) \
                from err
        applied[name] = value
    return applied


def _read_rc(path: str | os.PathLike) -> dict[str, str]:
    try:
        with open(path) as f:
            # python-cpl's reader, given the open file: given a string it would
            # take a missing file's name for the file's content
            return load_rc(f)
    except OSError as err:
        raise UsageError(f"cannot read rc file {str(path)!r}: {err.strerror}") from err
    except (IndexError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not an esorex rc file (expected NAME=VALUE lines)") \
            from err


def calib_options(items: Iterable[str]) -> dict[str, list[str]]:
    """``--calib TAG=FILE`` options as paths by tag (a repeated tag gives a list)."""
    calib: dict[str, list[str]] = {}
    for item in items:
        tag, path = split_assignment(item, "--calib")
        if not pathlib.Path(path).expanduser().is_file():
            raise UsageError(f"--calib {tag}: file {path!r} does not exist")
        calib.setdefault(tag, []).append(os.path.abspath(os.path.expanduser(path)))
    return calib
