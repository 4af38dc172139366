"""Data organisation: classify files by their headers, associate calibrations.

Both steps are driven by a rules file (``cpldask/instruments/<name>/rules.yaml``), so that
what makes a file a BIAS, or which flat goes with an exposure, is data that can be
read, changed and extended without touching this code. Only headers are read: a
directory of 24-IFU exposures is classified in well under a second per hundred files.

Nothing here knows an instrument. What the rules call a *unit* is the axis along
which an instrument's raw frames are split into image extensions and its recipes may
be called one part at a time: MUSE's 24 IFUs (``CHANnn``, one call per IFU),
HAWK-I's 4 detectors (``CHIPn.INT1``, one call for all four); an instrument without
such an axis declares none and has the one unit ``None``.

A data set of any size is split into groups of science exposures reduced together
(:func:`group_science`, by the rules' ``group_by``); each group and each exposure
gets its calibrations (:func:`associate_groups`): same setup, valid in time (a window
per calibration type, ESO's association levels), the nearest wins, an archive master
calibration stands in for the raw frames it was made of; the report lists every
candidate left out and why.

Public entry points (re-exported by :mod:`cpldask.workflow`): :func:`load_rules`,
:func:`classify`, :func:`associate`, :func:`associate_groups`, :func:`group_science`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import pathlib
import re
import statistics
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from astropy.io import fits

from .. import instruments

__all__ = ["Rules", "Frame", "Unclassified", "Classification", "Association", "Choice",
           "Rejected", "load_rules", "classify", "associate", "associate_groups",
           "group_science", "list_files", "detect_instrument"]

#: File name endings taken for FITS when a directory is walked (others are listed as
#: unclassified too, with the reason).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fz")


# ---------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Rules:
    """One instrument's rules, as read from its YAML file (see
    ``cpldask/instruments/muse/rules.yaml``).

    ``unit_name``, ``unit_extension`` and ``unit_split`` come from its ``units``
    section: what one unit is called (``IFU``), the regular expression whose first
    group numbers a raw frame's image extension (``^CHAN(\\d+)$``), and whether the
    workflow calls recipes per unit. Without the section the instrument has no unit
    axis (the one unit ``None``).
    """

    instrument: str
    identify: dict[str, Any]
    unit_extension: str | None
    keywords: dict[str, str]
    lamps: dict[str, str] | None
    classification: list[dict]
    association: dict
    workflow: dict
    source: str = ""
    unit_name: str = "unit"
    unit_split: bool = False
    unit_range: tuple[int, int] | None = None

    @property
    def science_tags(self) -> list[str]:
        return list(self.association.get("science", []))

    def calibration(self, tag: str) -> dict:
        """The association rule of ``tag`` (empty if the tag has none)."""
        return dict(self.association.get("calibrations", {}).get(tag) or {})


def load_rules(rules: str | os.PathLike | Rules | Mapping) -> Rules:
    """Read a rules file: a name shipped with cpldask (``'muse'``), a path to a YAML
    file, a mapping with the same content, or :class:`Rules` (returned as is)."""
    if isinstance(rules, Rules):
        return rules
    source = "<mapping>"
    if isinstance(rules, Mapping):
        data = dict(rules)
    else:
        text, source = _rules_text(rules)
        data = yaml.safe_load(text)
    units = dict(data.get("units") or {})
    missing = [k for k in ("instrument", "classification") if k not in data]
    if missing:
        raise ValueError(f"rules {source}: missing section(s) {', '.join(missing)}")
    return Rules(
        instrument=str(data["instrument"]),
        identify={str(k): v for k, v in (data.get("identify") or {}).items()},
        unit_extension=units.get("extension"),
        unit_name=str(units.get("name", "unit")),
        unit_split=bool(units.get("split", False)),
        unit_range=tuple(units["range"]) if units.get("range") else None,
        keywords=dict(data.get("keywords") or {}),
        lamps=data.get("lamps"),
        classification=list(data["classification"]),
        association=dict(data.get("association") or {}),
        workflow=dict(data.get("workflow") or {}),
        source=source,
    )


def _rules_text(name) -> tuple[str, str]:
    path = pathlib.Path(os.fspath(name)).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path.read_text(), str(path)
    shipped = instruments.rules_file(str(name))
    return shipped.read_text(), f"cpldask/instruments/{str(name).lower()}/rules.yaml"


def detect_instrument(files: Iterable[str]) -> str:
    """The shipped instrument whose ``identify`` rule most of ``files`` fit (their
    primary headers are read): what ``cpldask reduce RAW_DIR`` reduces.

    Raises
    ------
    ValueError
        No file is a frame of a shipped instrument; the message says what the files'
        INSTRUME keywords are.
    """
    rules = [load_rules(name) for name in instruments.names()]
    votes: dict[str, int] = {}
    seen: set[str] = set()
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = fits.getheader(path)
        except (OSError, ValueError, IndexError, TypeError):
            continue  # not FITS: classify() lists it with the reason
        seen.add(str(header.get("INSTRUME", "(none)")))
        for r in rules:
            if r.identify and all(_matches(_norm(header.get(k)), want)
                                  for k, want in r.identify.items()):
                votes[r.instrument] = votes.get(r.instrument, 0) + 1
    if not votes:
        raise ValueError(f"no file is a frame of {', '.join(r.instrument for r in rules)} "
                         f"(INSTRUME: {', '.join(sorted(seen)) or 'no FITS file'}); give "
                         f"rules=<path of a rules YAML file>")
    best = max(votes, key=votes.get)
    return next(name for name, r in zip(instruments.names(), rules) if r.instrument == best)


# ---------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Frame:
    """A classified file: its tag and the header values the rules look at."""

    path: str
    tag: str
    mjd: float | None  # start of the exposure (MJD-OBS or DATE-OBS); None for tables
    units: tuple[int, ...]  # units present as image extensions (raw frames)
    meta: dict  # short name -> header value (rules' "keywords"), plus "lamps"

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def __repr__(self) -> str:
        return f"<Frame {self.tag} {self.name}>"


@dataclasses.dataclass(frozen=True)
class Unclassified:
    """A file no rule could classify, and why."""

    path: str
    reason: str


@dataclasses.dataclass
class Classification:
    """The outcome of :func:`classify`: frames by tag, and the files left over."""

    frames: list[Frame]
    unclassified: list[Unclassified]
    rules: Rules

    @property
    def tags(self) -> dict[str, list[Frame]]:
        """Frames by tag, each list in time order."""
        out: dict[str, list[Frame]] = {}
        for f in sorted(self.frames, key=_time_order):
            out.setdefault(f.tag, []).append(f)
        return out

    def __getitem__(self, tag: str) -> list[Frame]:
        return self.tags.get(tag, [])

    def __contains__(self, tag: str) -> bool:
        return tag in self.tags

    def units(self) -> tuple:
        """Units present in every raw (multi-extension) frame; ``(None,)`` for an
        instrument without a unit axis. Products (archive master calibrations, which
        may hold one unit each) do not count."""
        if not self.rules.unit_extension:
            return (None,)
        sets = [set(f.units) for f in self.frames if f.units and not f.meta.get("pro_catg")]
        return tuple(sorted(set.intersection(*sets))) if sets else ()

    def summary(self) -> str:
        """A text table of the frames by tag, then the unclassified files."""
        lines = [f"{len(self.frames)} frames classified by {self.rules.source or 'rules'}"]
        for tag, frames in self.tags.items():
            first = frames[0]
            extra = []
            for key in ("mode", "binx", "exptime"):
                values = sorted({str(f.meta.get(key)) for f in frames if f.meta.get(key) is not None})
                if values:
                    extra.append(f"{key}={'/'.join(values)}")
            if first.units:
                extra.append(f"units={format_ranges(first.units)}")
            lines.append(f"  {tag:<18} {len(frames):>3}  {', '.join(extra)}")
            for f in frames:
                when = f"  {_isot(f.mjd)}" if f.mjd is not None else ""
                lamps = f"  lamps={','.join(f.meta['lamps'])}" if f.meta.get("lamps") else ""
                lines.append(f"      {f.name}{when}{lamps}")
        if self.unclassified:
            lines.append(f"{len(self.unclassified)} files not classified:")
            for u in self.unclassified:
                lines.append(f"  {os.path.basename(u.path)}: {u.reason}")
        return "\n".join(lines)


def list_files(raw: str | os.PathLike | Iterable, exclude: Iterable = ()) -> list[str]:
    """The files to classify: a directory is walked (hidden entries and ``exclude``
    directories skipped), a file or a list of files is taken as given."""
    if isinstance(raw, (str, os.PathLike)):
        raw = [raw]
    skip = {os.path.realpath(os.fspath(e)) for e in exclude}
    out = []
    for item in raw:
        path = os.path.abspath(os.path.expanduser(os.fspath(item)))
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and os.path.realpath(os.path.join(root, d)) not in skip)
                out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
        else:
            out.append(path)
    return list(dict.fromkeys(out))


def classify(files: str | os.PathLike | Iterable,
             rules: str | os.PathLike | Rules | Mapping | None = None) -> Classification:
    """Classify files by their headers into recipe input tags.

    Parameters
    ----------
    files : path, or iterable of paths
        Files or directories (walked recursively; hidden entries skipped).
    rules : str, path, mapping or Rules, optional
        The instrument's rules: a name (``"muse"``, ``"hawki"``), a YAML path or a
        mapping (see ``cpldask/instruments/muse/rules.yaml``); default: the shipped
        instrument the files belong to (:func:`detect_instrument`).

    Returns
    -------
    Classification
        ``.frames`` (with header metadata) and ``.unclassified`` (path and reason):
        no file is dropped silently.

    Examples
    --------
    >>> c = classify("raw/")                        # doctest: +SKIP
    >>> [f.name for f in c["BIAS"]]                 # doctest: +SKIP
    ['BIAS_01.fits', 'BIAS_02.fits', 'BIAS_03.fits']
    >>> c.unclassified[0].reason                    # doctest: +SKIP
    "INSTRUME is 'UVES': not a MUSE file"
    """
    paths = list_files(files)
    rules = load_rules(detect_instrument(paths) if rules is None else rules)
    frames, unclassified = [], []
    for path in paths:
        try:
            frame = _classify_one(path, rules)
        except _NotClassified as why:
            unclassified.append(Unclassified(path, str(why)))
        else:
            frames.append(frame)
    return Classification(frames, unclassified, rules)


class _NotClassified(Exception):
    pass


def _classify_one(path: str, rules: Rules) -> Frame:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-standard cards are not our business
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                primary = hdul[0].header
                # a product of one unit names it in its primary header (MUSE: EXTNAME
                # CHAN01), raw frames and merged products in their extensions
                extnames = [h.name for h in hdul]
                table = _first_table(hdul)
                truncated = _truncated(hdul, os.path.getsize(path))
    except (OSError, ValueError, IndexError, TypeError) as err:
        if not os.path.isfile(path):
            raise _NotClassified("no such file") from None
        kind = "empty file" if os.path.getsize(path) == 0 else "not a FITS file"
        raise _NotClassified(f"{kind} ({type(err).__name__}: {_short(err)})") from None
    if truncated:
        raise _NotClassified(truncated)
    for key, want in rules.identify.items():
        have = _norm(primary.get(key))
        if have is None:
            raise _NotClassified(f"no {key} keyword: not recognisable as a "
                                 f"{rules.instrument} file")
        if not _matches(have, want):
            raise _NotClassified(f"{key} is {have!r}: not a {rules.instrument} file "
                                 f"(rules: {rules.source or rules.instrument})")
    meta = _header_values(primary, rules.keywords)
    lamps = _lamps_on(primary, rules.lamps)
    if lamps is not None:
        meta["lamps"] = lamps
    units = _units(extnames, rules.unit_extension)
    for rule in rules.classification:
        if _rule_holds(rule, meta, table):
            tag = str(rule["tag"])
            if tag.startswith("{") and tag.endswith("}"):
                tag = str(meta[tag[1:-1]])
            return Frame(path, tag, _mjd(primary), units, meta)
    if meta.get("pro_catg") and not any(meta.get(k) for k in ("catg", "type", "tech")):
        raise _NotClassified(f"a pipeline product (PRO CATG {meta['pro_catg']!r}), not an "
                             f"input the rules take")
    shown = {k: meta.get(k) for k in ("catg", "type", "tech", "pro_catg") if meta.get(k)}
    what = ", ".join(f"{k}={v!r}" for k, v in shown.items()) or "no DPR/PRO keywords"
    raise _NotClassified(f"no classification rule matches ({what})")


def _truncated(hdul, size: int) -> str | None:
    """Why a file is truncated (its headers declare data past its end), or None. A
    missing padding of the last 2880-byte block is let pass, as CFITSIO does."""
    for i, hdu in enumerate(hdul):
        info = hdul.fileinfo(i)
        end = info["datLoc"] + info["datSpan"]
        if info["datSpan"] and end - 2879 > size:
            return (f"truncated: {hdu.name} (HDU {i}) declares data up to byte {end}, "
                    f"the file ends at byte {size}")
    return None


def _header_values(header, keywords: Mapping[str, Any]) -> dict:
    """Short name -> header value, for the rules' ``keywords``.

    A keyword is either a header key (``mode: ESO INS MODE``) or a key with a
    regular expression whose first group is the value (``field: {key: ESO INS MODE,
    pattern: '^(WFM|NFM)'}``); a value the pattern does not match is left out.
    """
    meta = {}
    for name, spec in keywords.items():
        key, pattern = (spec["key"], spec.get("pattern")) if isinstance(spec, Mapping) \
            else (spec, None)
        if key not in header:
            continue
        value = _norm(header[key])
        if pattern is not None:
            m = re.match(pattern, str(value))
            if not m:
                continue
            value = m.group(1)
        meta[name] = value
    return meta


def _first_table(hdul):
    """(EXTNAME, column names) of the first table extension, or None."""
    for hdu in hdul[1:]:
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            return hdu.name, [c.name for c in hdu.columns]
    return None


def _rule_holds(rule: Mapping, meta: Mapping, table) -> bool:
    for name, want in (rule.get("when") or {}).items():
        if not _matches(meta.get(name), want):
            return False
    spec = rule.get("table")
    if spec:
        if table is None:
            return False
        extname, columns = table
        if "extname" in spec and extname != str(spec["extname"]).upper():
            return False
        if not set(spec.get("columns", [])) <= set(columns):
            return False
    return bool(rule.get("when") or spec)


def _matches(have, want) -> bool:
    """A header value against a rule's value: equal to it, to one of a list, or,
    for ``{all: [A, B]}``, a comma-separated list holding A and B in any order (as
    ESO's own rules test DPR TYPE with ``like "%A%" and like "%B%"``)."""
    if have is None:
        return False
    if isinstance(want, Mapping):
        items = {item.strip() for item in str(have).split(",")}
        return set(map(str, want["all"])) <= items
    wants = want if isinstance(want, (list, tuple)) else [want]
    return any(_norm(have) == _norm(w) for w in wants)


def _norm(value):
    """Header values compared as the rules write them: strings stripped, bools kept."""
    if isinstance(value, str):
        return value.strip()
    return value


def _lamps_on(header, spec) -> list[str] | None:
    """Names of the lamps that were on: lamp on and, where the rules name a
    shutter keyword, its shutter open; names cut by ``strip`` and mapped by
    ``rename`` (see instruments/muse/rules.yaml)."""
    if not spec or spec.get("count") not in header:
        return None
    out = []
    for i in range(1, int(header[spec["count"]]) + 1):
        if header.get(spec["state"].format(i=i)) is not True:
            continue
        if "shutter" in spec and header.get(spec["shutter"].format(i=i)) is not True:
            continue
        name = str(header.get(spec["name"].format(i=i), f"LAMP{i}")).strip()
        prefix = spec.get("strip")
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        out.append(str((spec.get("rename") or {}).get(name, name)))
    return out


def _units(extnames, pattern) -> tuple[int, ...]:
    if not pattern:
        return ()
    rx = re.compile(pattern)
    found = set()
    for name in extnames:
        m = rx.match(name or "")
        if m:
            found.add(int(m.group(1)))
    return tuple(sorted(found))


def _mjd(header) -> float | None:
    if "MJD-OBS" in header:
        try:
            return float(header["MJD-OBS"])
        except (TypeError, ValueError):
            pass
    date = header.get("DATE-OBS")
    if date:
        try:
            from astropy.time import Time

            return float(Time(str(date).strip(), format="isot", scale="utc").mjd)
        except ValueError:
            return None
    return None


def _short(err) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return text[:120]


def _time_order(f: Frame):
    return (f.mjd is None, f.mjd or 0.0, f.path)


def _isot(mjd: float) -> str:
    t = datetime.datetime(1858, 11, 17) + datetime.timedelta(days=mjd)
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def format_ranges(units: Iterable[int]) -> str:
    """1,2,3,5 -> '1-3,5'."""
    units = sorted(units)
    parts, start = [], None
    for i, k in enumerate(units):
        if start is None:
            start = k
        if i + 1 == len(units) or units[i + 1] != k + 1:
            parts.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ",".join(parts)


# ---------------------------------------------------------------------------------
# Grouping: which science exposures are reduced together
# ---------------------------------------------------------------------------------
def group_science(classification: Classification) -> list[tuple[str, list[Frame]]]:
    """The science exposures split into groups reduced together (one combined product
    each, e.g. MUSE's cube of the dithered exposures of one target), by the rules'
    ``association.group_by`` header values, each with a label.

    Groups are in the time order of their first exposure; without ``group_by`` all
    science frames are one group. A label is the value of the first ``group_by`` key
    (``NGC1234``), of the first two if that is not unique, and so on, made safe for a
    folder name.

    Examples
    --------
    >>> [(label, len(frames)) for label, frames in group_science(c)]   # doctest: +SKIP
    [('SYNTH_A', 3), ('SYNTH_B', 3)]
    """
    rules = classification.rules
    keys = list(rules.association.get("group_by") or [])
    groups: dict[tuple, list[Frame]] = {}
    for f in sorted((f for t in rules.science_tags for f in classification[t]),
                    key=_time_order):
        groups.setdefault(tuple(_norm(f.meta.get(k)) for k in keys), []).append(f)
    values = list(groups)
    labels = [""] * len(values)
    for n in range(1, len(keys) + 1):
        labels = [_safe("_".join(str(v) for v in value[:n] if v is not None))
                  for value in values]
        if len(set(labels)) == len(labels):
            break
    if not keys or len(set(labels)) < len(labels) or not all(labels):
        labels = [f"{label}-{i + 1}" if label else str(i + 1) for i, label in enumerate(labels)]
    return list(zip(labels, groups.values()))


def _safe(text: str) -> str:
    """A label usable as a folder name: runs of other characters become one '-'."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", text).strip("-")


# ---------------------------------------------------------------------------------
# Association
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rejected:
    """A candidate calibration frame that was not taken, and why."""

    frame: Frame
    reason: str


@dataclasses.dataclass
class Choice:
    """The frames of one calibration tag for the call of one unit, with every
    candidate left out and the reason.

    ``dt_hours`` is the mean time of the frames minus the exposure's (None for
    undated files); ``level`` the index of the first of the rule's validity windows
    (``within_days``) the set is in, ESO's association level (None: the rule has no
    window); ``replaced_by`` the archive master tags that make reducing these frames
    unnecessary; ``replaces`` (for an archive master) the raw tag it stands in for.
    """

    frames: list[Frame]
    dt_hours: float | None = None
    level: int | None = None
    rejected: list[Rejected] = dataclasses.field(default_factory=list)
    replaces: str | None = None
    replaced_by: tuple[str, ...] = ()


@dataclasses.dataclass
class Association:
    """Which frames of each tag go into the reduction of ``science``.

    ``chosen[tag][unit]`` is the list of frames for the call of ``unit`` (the same
    list for every unit where the rule says ``all_units`` or ``static``);
    ``choices[tag][unit]`` the :class:`Choice` behind it, with the rejected
    candidates. Made for a group of exposures (:func:`associate_groups`),
    ``exposures`` holds one association per exposure (calibrations nearest to each
    one); for a single exposure it is ``[self]``.
    """

    science: list[Frame]
    units: tuple[int, ...]
    chosen: dict[str, dict[int, list[Frame]]]
    notes: list[str]
    rules: Rules
    unused: list[Frame] = dataclasses.field(default_factory=list)
    choices: dict[str, dict[Any, Choice]] = dataclasses.field(default_factory=dict)
    label: str = ""
    when: float | None = None  # the reference time (MJD): the exposures' mean
    parts: list["Association"] = dataclasses.field(default_factory=list, repr=False)
    #: for a tag whose rule has ``own_calibrations``: the calibrations chosen for its
    #: frames (nearest to them, of their setup), e.g. the master bias of muse_lingain;
    #: they may have ``own`` associations in turn (the twilight flats of a STD's)
    own: dict[str, "Association"] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def exposures(self) -> list["Association"]:
        """One association per science exposure of the group (``[self]`` for one)."""
        return self.parts or [self]

    def frames(self, tag: str, unit: int | None = None) -> list[Frame]:
        """Frames of ``tag`` for ``unit`` (None: the frames common to all units)."""
        by_unit = self.chosen.get(tag)
        if not by_unit:
            return []
        if unit is None:
            unit = self.units[0]
        return by_unit.get(unit, [])

    def paths(self, tag: str, unit: int | None = None) -> list[str]:
        return [f.path for f in self.frames(tag, unit)]

    def __contains__(self, tag: str) -> bool:
        return bool(self.chosen.get(tag)) and all(self.chosen[tag].get(k) for k in self.units)

    def summary(self) -> str:
        when = self.when
        head = (f"science: {', '.join(f.name for f in self.science) or '(none)'}"
                + (f" at {_isot(when)}" if when is not None and self.science else ""))
        lines = [head]
        for tag, by_unit in self.chosen.items():
            distinct = {tuple(f.path for f in v) for v in by_unit.values()}
            if len(distinct) == 1:
                frames = next(iter(by_unit.values()))
                lines.append(f"  {tag:<18} {_describe(frames, when)}")
            else:
                for unit, frames in by_unit.items():
                    lines.append(f"  {tag + f'[unit {unit}]':<18} {_describe(frames, when)}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.unused:
            counts: dict[str, int] = {}
            for f in self.unused:
                counts[f.tag] = counts.get(f.tag, 0) + 1
            lines.append("  not used: " + ", ".join(f"{n} {tag}" for tag, n in counts.items()))
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        """The association report as data: one row per exposure, calibration tag and
        unit, with the chosen file names, the time difference (hours), the association
        level, the archive masters standing in, and each rejected file's reason.

        Examples
        --------
        >>> row = a.rows()[0]                                           # doctest: +SKIP
        >>> row["tag"], row["chosen"], row["rejected"]["BIAS_2x2_1.fits"]  # doctest: +SKIP
        ('BIAS', ['BIAS_1.fits', ...], "binx is 2, the exposure's 1")
        """
        out = []
        for exp in self.exposures:
            name = exp.science[0].name if len(exp.science) == 1 else None
            for for_tag, a in [(None, exp), *_owned(exp)]:
                for tag, by_unit in a.choices.items():
                    for unit, c in by_unit.items():
                        out.append({"exposure": name, "group": self.label, "for": for_tag,
                                    "tag": tag, "unit": unit,
                                    "chosen": [f.name for f in c.frames],
                                    "dt_hours": c.dt_hours, "level": c.level,
                                    "replaces": c.replaces,
                                    "replaced_by": list(c.replaced_by),
                                    "rejected": {r.frame.name: r.reason for r in c.rejected}})
        return out

    def report(self) -> str:
        """The association report as text: per exposure and calibration tag the chosen
        files with their time difference, and every rejected candidate with its
        reason (``cpldask reduce --dry-run`` prints it). An exposure with the same
        files as an earlier one of its group says so instead of repeating them;
        :meth:`rows` has every row."""
        unit_name = self.rules.unit_name
        lines = []
        if self.label or len(self.exposures) > 1:
            n = len(self.science)
            lines.append(f"group {self.label or '-'}: {n} exposure{'s' * (n != 1)}")
        seen: dict[tuple, str] = {}
        for exp in self.exposures:
            if exp.science:
                f = exp.science[0]
                shown = ", ".join(f"{k} {f.meta[k]}" for k in
                                  (self.rules.association.get("group_by") or [])
                                  if f.meta.get(k) is not None)
                lines.append(f"exposure {', '.join(x.name for x in exp.science)} at "
                             f"{_isot(exp.when) if exp.when is not None else '?'}"
                             + (f" ({shown})" if shown else ""))
            else:
                lines.append("no science exposure: calibrations nearest to the middle "
                             "of the data set")
            same = tuple((tag, k, tuple(f.path for f in c.frames))
                         for tag, by_unit in exp.choices.items() for k, c in by_unit.items())
            if same in seen:
                lines.append(f"  the same calibrations as {seen[same]}")
                continue
            if exp.science:
                seen[same] = exp.science[0].name
            for tag, by_unit in exp.choices.items():
                lines += _report_tag(tag, by_unit, unit_name)
            for path, sub in _owned(exp):
                pad = "  " * path.count("/")
                lines.append(f"  {pad}calibrations of the {path.rpartition('/')[2]} frames:")
                for sub_tag, by_unit in sub.choices.items():
                    lines += [f"  {pad}{line}"
                              for line in _report_tag(sub_tag, by_unit, unit_name)]
                lines += [f"    {pad}note: {n}" for n in sub.notes]
            lines += [f"  note: {n}" for n in exp.notes]
        return "\n".join(lines)


def _owned(a: Association, path: str = ""):
    """``(path, association)`` of every ``own`` association under ``a``, depth first;
    the path names the tags from the top: ``"STD"``, ``"STD/SKYFLAT"``."""
    for tag, sub in a.own.items():
        here = f"{path}/{tag}" if path else tag
        yield here, sub
        yield from _owned(sub, here)


def _report_tag(tag: str, by_unit: Mapping[Any, Choice], unit_name: str) -> list[str]:
    """The lines of one tag: the files chosen (a unit named where it differs from the
    others'), then each file no unit took, with the reason."""
    choices = list(by_unit.items())
    if not any(c.frames or c.rejected for _, c in choices):
        return []
    first = choices[0][1]
    if all([f.path for f in c.frames] == [f.path for f in first.frames] for _, c in choices):
        chosen = _short_names([f.name for f in first.frames])
    else:
        chosen = "; ".join(f"{_short_names([f.name for f in c.frames]) or 'none'} "
                           f"[{unit_name} {k}]" for k, c in choices)
    dts = [c.dt_hours for _, c in choices if c.dt_hours is not None]
    levels = {c.level for _, c in choices if c.level is not None}
    when = ""
    if dts:
        when = f" ({min(dts):+.1f} h" if min(dts) == max(dts) else \
            f" ({min(dts):+.1f} .. {max(dts):+.1f} h"
        when += f", level {'/'.join(map(str, sorted(levels)))})" if levels else ")"
    extra = ""
    replaced = sorted({m for _, c in choices for m in c.replaced_by})
    if replaced:
        extra = f"; the archive {' and '.join(replaced)} stand{'s' * (len(replaced) == 1)} in"
    replaces = {c.replaces for _, c in choices if c.replaces}
    if replaces:
        extra = f"; archive master, stands in for {', '.join(sorted(replaces))}"
    if not chosen and replaced:
        lines = [f"  {tag}: not reduced, the archive {' and '.join(replaced)} "
                 f"stand{'s' * (len(replaced) == 1)} in"]
    else:
        lines = [f"  {tag}: {chosen or 'none'}{when}{extra}"]
    taken = {f.path for _, c in choices for f in c.frames}
    # a file's reason: that of a unit it holds (not "lacks IFU 1" for the file of IFU 2)
    reasons: dict[str, tuple[str, str]] = {}
    for _, c in choices:
        for r in c.rejected:
            if r.frame.path in taken:
                continue
            if r.frame.path not in reasons or reasons[r.frame.path][1].startswith("lacks "):
                reasons[r.frame.path] = (r.frame.name, r.reason)
    by_reason: dict[str, list[str]] = {}
    for name, reason in reasons.values():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        lines.append(f"      not {_short_names(names)}: {reason}")
    return lines


def _short_names(names: list[str], n: int = 4) -> str:
    if len(names) <= n:
        return ", ".join(names)
    return ", ".join(names[:n]) + f" (+{len(names) - n} more)"


def _describe(frames: list[Frame], when) -> str:
    names = ", ".join(f.name for f in frames)
    dated = [f.mjd for f in frames if f.mjd is not None]
    if dated and when is not None:
        dt = (statistics.fmean(dated) - when) * 24.0
        return f"{names}  ({dt:+.1f} h)"
    return names


def associate_groups(classification: Classification,
                     units: Iterable[int] | None = None) -> list[Association]:
    """One :class:`Association` per group of science exposures (:func:`group_science`),
    each with the associations of its exposures (``.exposures``); a data set without
    science frames gives one association of its calibrations.

    Examples
    --------
    >>> for a in associate_groups(classify("raw/")):          # doctest: +SKIP
    ...     print(a.report())
    """
    groups = group_science(classification)
    if not groups:
        return [associate(classification, units)]
    return [associate(classification, units, science=frames, label=label)
            for label, frames in groups]


def associate(classification: Classification, units: Iterable[int] | None = None,
              *, science: Iterable[Frame] | None = None, label: str = "",
              calibrations: Iterable[str] | None = None,
              owners: Iterable[str] = ()) -> Association:
    """Choose, for each calibration tag and unit, the frames the reduction uses.

    The rules (``association`` section) say which header values must agree with the
    science frames (mode, binning, read-out), how many frames a set needs, whether the
    frames must hold the call's unit or all units, and how far from the exposure in
    time a calibration is valid (``within_days``, one window per association level).
    Among the sets that qualify, the one at the lowest level and then nearest in time
    to the science exposures is taken. An archive master calibration (a rule with
    ``replaces``) that qualifies is used instead of reducing the raw frames it stands
    in for, unless those are at a better level. With several science frames, each
    exposure also gets an association of its own (``.exposures``).

    Parameters
    ----------
    classification : Classification
    units : iterable of int, optional
        Units (MUSE: IFUs) to reduce (default: those present in every raw frame).
    science : frames, optional
        The exposures to reduce (default: every frame of the rules' science tags).
    label : str
        The group's label (see :func:`group_science`).
    calibrations : tags, optional
        Associate only these calibration tags (default: every tag of the rules). A
        tag whose rule names ``own_calibrations`` gets those associated to its own
        frames (``.own[tag]``), as ESO's rules associate each recipe's inputs.
    owners : tags, optional
        The tags whose own calibrations these are (for ``.own``: a tag is not
        associated again inside its own calibrations).

    Raises
    ------
    ValueError
        A required calibration (not ``optional`` in the rules) has no qualifying set
        and no archive master stands in for it, or the science frames disagree in
        mode/binning.
    """
    rules = classification.rules
    units = _reduced_units(classification, units)
    if science is None:
        science = [f for t in rules.science_tags for f in classification[t]]
    science = sorted(science, key=_time_order)
    for frame in science:
        missing = [k for k in units if k is not None and k not in frame.units]
        if missing:
            raise ValueError(f"science frame {frame.name} lacks {rules.unit_name}(s) "
                             f"{format_ranges(missing)}")
    tags = list(rules.association.get("calibrations", {}))
    if calibrations is not None:
        tags = [t for t in tags if t in set(calibrations)]
    ref_values = _setup(science, rules, tags)
    notes: list[str] = []
    dated = [f.mjd for f in science if f.mjd is not None]
    if dated:
        ref_mjd = statistics.fmean(dated)
    else:
        all_dated = [f.mjd for f in classification.frames if f.mjd is not None]
        ref_mjd = statistics.median(all_dated) if all_dated else 0.0
        notes.append("no science frame: calibrations nearest to the middle of the data "
                     "set were chosen (validity windows not applied)")
    gap = float(rules.association.get("set_gap_minutes", 60)) / 1440.0
    choices: dict[str, dict[Any, Choice]] = {}
    for tag in tags:
        rule = rules.calibration(tag)
        candidates = classification[tag]
        if rule.get("static"):
            choice = _nearest_static(candidates, ref_mjd)
            if len(candidates) > 1:
                notes.append(f"{tag}: {len(candidates)} files, took {choice.frames[0].name}")
            choices[tag] = {k: choice for k in units}
            continue
        windows = _windows(rule) if dated else []
        need_all = bool(rule.get("all_units"))
        choices[tag] = {k: _choose(candidates, rule, ref_values, ref_mjd, gap, windows,
                                   set() if rule.get("units") == "any"
                                   else set(units) if need_all else {k},
                                   rules.unit_name)
                        for k in units}
    _prefer_masters(choices, rules, units, gap)
    chosen = _chosen(choices, classification, rules, units, ref_values, notes)
    used = {f.path for by_unit in chosen.values() for fs in by_unit.values() for f in fs}
    used |= {f.path for f in science}
    unused = [f for f in classification.frames if f.path not in used]
    out = Association(science, units, chosen, notes, rules, unused, choices, label,
                      ref_mjd if dated else None)
    for tag in tags:
        own = rules.calibration(tag).get("own_calibrations")
        if own and tag in chosen and tag not in owners:
            frames = chosen[tag][units[0]]
            try:
                out.own[tag] = associate(classification, units, science=frames,
                                         label=label, calibrations=own,
                                         owners=(*owners, tag))
            except ValueError as err:
                out.notes.append(f"{tag}: its calibrations: {err}")
    if len(science) > 1 and calibrations is None:
        try:
            out.parts = [associate(classification, units, science=[f], label=label)
                         for f in science]
        except ValueError as err:
            raise ValueError(f"group {label or '-'}: {err}") from err
    return out


def _reduced_units(classification: Classification, units) -> tuple:
    rules = classification.rules
    if not rules.unit_extension:
        if units is not None and tuple(units) not in ((), (None,)):
            raise ValueError(f"{rules.instrument} frames are not split into units; "
                             f"leave units out")
        return (None,)
    units = tuple(sorted(set(units))) if units is not None else classification.units()
    if not units and classification.frames:
        raise ValueError(f"no {rules.unit_name} is present in every raw frame; give "
                         f"units=...")
    return units


def _setup(science: list[Frame], rules: Rules, tags: list[str]) -> dict:
    """The header values the calibrations of ``tags`` must share with the science
    frames."""
    all_match = {m for t in tags for m in rules.calibration(t).get("match", [])}
    ref_values = {}
    # in the rules' order, so that a mix of modes is named by "mode", not "field"
    keys = [k for k in rules.keywords if k in all_match]
    for key in keys + sorted(all_match - set(keys)):
        values = {_norm(f.meta.get(key)) for f in science}
        if len(values) > 1:
            raise ValueError(f"the science frames differ in {key} ({sorted(map(str, values))}); "
                             f"reduce them separately (pass the files of one setup)")
        if values:
            ref_values[key] = values.pop()
    return ref_values


def _windows(rule: Mapping) -> list[float]:
    """The rule's validity windows in days, one per association level (``within_days:
    3`` or ``[1, 3, 30]``); empty: no limit in time."""
    value = rule.get("within_days")
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return sorted(float(v) for v in values)


def _nearest_static(candidates: list[Frame], ref_mjd: float) -> Choice:
    if not candidates:
        return Choice([])
    dated = [f for f in candidates if f.mjd is not None]
    if dated:
        pick = min(dated, key=lambda f: (abs(f.mjd - ref_mjd), f.path))
    else:
        pick = sorted(candidates, key=lambda f: f.path)[-1]
    why = "another file of this tag was taken (the nearest in time, or the last by name)"
    return Choice([pick], rejected=[Rejected(f, why) for f in candidates if f is not pick])


def _choose(candidates: list[Frame], rule: Mapping, ref_values: Mapping, ref_mjd: float,
            gap: float, windows: list[float], want_units: set, unit_name: str) -> Choice:
    """The set of ``candidates`` one unit's call takes, and why each other was not."""
    match = [k for k in rule.get("match", []) if k in ref_values]
    rejected, usable = [], []
    for f in candidates:
        why = next((f"{k} is {_norm(f.meta.get(k))!r}, not {ref_values[k]!r}"
                    for k in match if _norm(f.meta.get(k)) != ref_values[k]), None)
        lack = sorted(want_units - {None} - set(f.units))
        if why is None and lack:
            why = f"lacks {unit_name} {format_ranges(lack)}"
        if why is None and windows:
            if f.mjd is None:
                why = "has no date (MJD-OBS, DATE-OBS)"
            elif abs(f.mjd - ref_mjd) >= windows[-1]:
                why = (f"taken {(f.mjd - ref_mjd):+.1f} d away, outside the "
                       f"+-{windows[-1]:g} d validity")
        if why is None:
            usable.append(f)
        else:
            rejected.append(Rejected(f, why))
    need = int(rule.get("min", 1))
    sets = []
    for s in _sets(usable, rule.get("match", []), gap):
        if len(s) >= need:
            sets.append(s)
        else:
            rejected += [Rejected(f, f"in a set of {len(s)}, fewer than the {need} needed")
                         for f in s]
    if not sets:
        return Choice([], rejected=rejected)

    def level(s: list[Frame]) -> int:
        dt = abs(_mid(s) - ref_mjd)
        return next((i for i, w in enumerate(windows) if dt < w), len(windows))

    best = min(sets, key=lambda s: (level(s), abs(_mid(s) - ref_mjd), _mid(s)))
    hours = (lambda s: f"{(_mid(s) - ref_mjd) * 24.0:+.1f} h")
    for s in sets:
        if s is best:
            continue
        why = (f"a nearer set was taken ({hours(best)} against {hours(s)})"
               if level(s) == level(best) else
               f"at association level {level(s)}; a set at level {level(best)} was taken")
        rejected += [Rejected(f, why) for f in s]
    n = rule.get("frames")
    if n:
        keep = sorted(best, key=lambda f: (abs((f.mjd or 0.0) - ref_mjd), f.path))[:int(n)]
        rejected += [Rejected(f, f"only the {n} nearest frame(s) of the set are used")
                     for f in best if f not in keep]
        best = sorted(keep, key=_time_order)
    dt = (_mid(best) - ref_mjd) * 24.0 if math.isfinite(_mid(best)) else None
    return Choice(best, dt, level(best) if windows else None, rejected)


def _prefer_masters(choices: dict[str, dict[Any, Choice]], rules: Rules, units: tuple,
                    gap: float) -> None:
    """Archive masters (rules with ``replaces: <raw tag>``) that fit a unit stand in
    for reducing the raw frames of that tag, when all masters of that tag fit (MUSE:
    MASTER_FLAT with its TRACE_TABLE), are of one set, and are at no worse an
    association level than the raw frames. Otherwise they are rejected, and why."""
    masters_of: dict[str, list[str]] = {}
    for tag in choices:
        raw = rules.calibration(tag).get("replaces")
        if raw:
            masters_of.setdefault(str(raw), []).append(tag)
    for raw, masters in masters_of.items():
        keep_for = rules.calibration(raw).get("keep_for")
        for k in units:
            picks = [choices[m][k] for m in masters]
            if not any(p.frames for p in picks):
                continue
            raw_choice = choices.get(raw, {}).get(k)
            mids = [_mid(p.frames) for p in picks if p.frames]
            levels = [p.level for p in picks if p.level is not None]
            why = None
            if not all(p.frames for p in picks):
                lack = [m for m, p in zip(masters, picks) if not p.frames]
                why = f"no fitting {', '.join(lack)} beside it: the {raw} frames are reduced"
            elif max(mids) - min(mids) > gap:
                why = f"{' and '.join(masters)} are not of one set: the {raw} frames are reduced"
            elif raw_choice is not None and raw_choice.frames and levels \
                    and raw_choice.level is not None and max(levels) > raw_choice.level:
                why = (f"the {raw} frames are at a better association level "
                       f"({raw_choice.level} against {max(levels)}): they are reduced")
            elif raw_choice is not None and raw_choice.frames \
                    and raw_choice.dt_hours is not None and all(
                        p.dt_hours is not None for p in picks) and max(
                        abs(p.dt_hours) for p in picks) > abs(raw_choice.dt_hours) + gap * 24:
                # the nearest wins; a master made of the raw set itself is as near (its
                # date is that of the set's first frame, within the set gap)
                far = max((p.dt_hours for p in picks), key=abs)
                why = (f"the {raw} frames are nearer ({raw_choice.dt_hours:+.1f} h against "
                       f"{far:+.1f} h): they are reduced")
            if why is not None:
                for p in picks:
                    p.rejected[:0] = [Rejected(f, why) for f in p.frames]
                    p.frames, p.dt_hours, p.level = [], None, None
                continue
            for p in picks:
                p.replaces = raw
            if raw_choice is None:
                continue
            raw_choice.replaced_by = tuple(masters)
            if raw_choice.frames and not keep_for:
                names = ", ".join(p.frames[0].name for p in picks)
                raw_choice.rejected[:0] = [
                    Rejected(f, f"the archive {' and '.join(masters)} ({names}) fit: "
                                f"not reduced anew") for f in raw_choice.frames]
                raw_choice.frames = []


def _chosen(choices, classification, rules, units, ref_values, notes) -> dict:
    """``chosen[tag][unit]``; raises for a required tag nothing stands in for."""
    unit = rules.unit_name
    chosen: dict[str, dict[Any, list[Frame]]] = {}
    for tag, by_choice in choices.items():
        rule = rules.calibration(tag)
        by_unit = {k: c.frames for k, c in by_choice.items() if c.frames}
        missing = [k for k in units if k not in by_unit and not by_choice[k].replaced_by]
        if missing:
            why = _why_none(tag, classification[tag], by_choice[missing[0]])
            if not rule.get("optional") and not rule.get("replaces"):
                raise ValueError(f"no usable {tag}{_for(unit, missing)}: {why}")
            if by_unit or (classification[tag] and not rule.get("replaces")):
                notes.append(f"{tag}: none usable{_for(unit, missing)}: {why}")
            by_unit = {} if len(missing) == len(units) or rule.get("all_units") else by_unit
        if by_unit:
            chosen[tag] = by_unit
    return chosen


def _sets(frames: list[Frame], match: list[str], gap: float) -> list[list[Frame]]:
    """Split frames into sets: equal match values, consecutive frames < gap apart."""
    groups: dict[tuple, list[Frame]] = {}
    for f in sorted(frames, key=_time_order):
        groups.setdefault(tuple(str(f.meta.get(k)) for k in match), []).append(f)
    out = []
    for members in groups.values():
        current: list[Frame] = []
        for f in members:
            if current and (f.mjd is None or current[-1].mjd is None
                            or f.mjd - current[-1].mjd > gap):
                out.append(current)
                current = []
            current.append(f)
        if current:
            out.append(current)
    return out


def _mid(frames: list[Frame]) -> float:
    dated = [f.mjd for f in frames if f.mjd is not None]
    return statistics.fmean(dated) if dated else math.inf


def _for(unit: str, missing: list) -> str:
    """`` for IFU(s) 1-2`` (nothing for an instrument without units)."""
    missing = [k for k in missing if k is not None]
    return f" for {unit}(s) {format_ranges(missing)}" if missing else ""


def _why_none(tag: str, candidates: list[Frame], choice: Choice) -> str:
    """Why no set of ``tag`` qualified: the reasons of the rejected candidates."""
    if not candidates:
        return f"no {tag} frame in the data"
    counts: dict[str, int] = {}
    for r in choice.rejected:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    reasons = "; ".join(f"{reason} ({n})" for reason, n in counts.items())
    return f"{len(candidates)} {tag} frame(s), none usable: {reasons}"
