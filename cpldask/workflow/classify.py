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

Public entry points (re-exported by :mod:`cpldask.workflow`): :func:`load_rules`,
:func:`classify`, :func:`associate`.
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

__all__ = ["Rules", "Frame", "Unclassified", "Classification", "Association",
           "load_rules", "classify", "associate", "list_files", "detect_instrument"]

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
        instrument without a unit axis."""
        if not self.rules.unit_extension:
            return (None,)
        sets = [set(f.units) for f in self.frames if f.units]
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
                extnames = [h.name for h in hdul[1:]]
                table = _first_table(hdul)
    except (OSError, ValueError, IndexError, TypeError) as err:
        if not os.path.isfile(path):
            raise _NotClassified("no such file") from None
        kind = "empty file" if os.path.getsize(path) == 0 else "not a FITS file"
        raise _NotClassified(f"{kind} ({type(err).__name__}: {_short(err)})") from None
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
    found = []
    for name in extnames:
        m = rx.match(name or "")
        if m:
            found.append(int(m.group(1)))
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
# Association
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Association:
    """Which frames of each tag go into the reduction of ``science``.

    ``chosen[tag][unit]`` is the list of frames for the call of ``unit`` (the same
    list for every unit where the rule says ``all_units`` or ``static``).
    """

    science: list[Frame]
    units: tuple[int, ...]
    chosen: dict[str, dict[int, list[Frame]]]
    notes: list[str]
    rules: Rules
    unused: list[Frame] = dataclasses.field(default_factory=list)

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
        when = statistics.fmean(f.mjd for f in self.science if f.mjd is not None) \
            if any(f.mjd is not None for f in self.science) else None
        head = (f"science: {', '.join(f.name for f in self.science) or '(none)'}"
                + (f" at {_isot(when)}" if when is not None else ""))
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


def _describe(frames: list[Frame], when) -> str:
    names = ", ".join(f.name for f in frames)
    dated = [f.mjd for f in frames if f.mjd is not None]
    if dated and when is not None:
        dt = (statistics.fmean(dated) - when) * 24.0
        return f"{names}  ({dt:+.1f} h)"
    return names


def associate(classification: Classification, units: Iterable[int] | None = None,
              *, science: Iterable[Frame] | None = None) -> Association:
    """Choose, for each calibration tag and unit, the frames the reduction uses.

    The rules (``association`` section) say which header values must agree with the
    science frames (mode, binning, read-out), how many frames a set needs, and whether
    the frames must hold the call's unit or all units; among the sets that qualify, the
    one nearest in time to the science exposures is taken.

    Parameters
    ----------
    classification : Classification
    units : iterable of int, optional
        Units (MUSE: IFUs) to reduce (default: those present in every raw frame).
    science : frames, optional
        The exposures to reduce (default: every frame of the rules' science tags).

    Raises
    ------
    ValueError
        A required calibration (not ``optional`` in the rules) has no qualifying set,
        or the science frames disagree in mode/binning.
    """
    rules = classification.rules
    unit = rules.unit_name
    if not rules.unit_extension:
        if units is not None and tuple(units) not in ((), (None,)):
            raise ValueError(f"{rules.instrument} frames are not split into units; "
                             f"leave units out")
        units = (None,)
    elif units is not None:
        units = tuple(sorted(set(units)))
    else:
        units = classification.units()
    if not units and classification.frames:
        raise ValueError(f"no {unit} is present in every raw frame; give units=...")
    if science is None:
        science = [f for t in rules.science_tags for f in classification[t]]
    science = sorted(science, key=_time_order)
    notes: list[str] = []
    gap = float(rules.association.get("set_gap_minutes", 60)) / 1440.0
    calib_tags = list(rules.association.get("calibrations", {}))
    all_match = {m for t in calib_tags for m in rules.calibration(t).get("match", [])}
    for frame in science:
        missing = [k for k in units if k is not None and k not in frame.units]
        if missing:
            raise ValueError(f"science frame {frame.name} lacks {unit}(s) {format_ranges(missing)}")
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
    dated = [f.mjd for f in science if f.mjd is not None]
    if dated:
        ref_mjd = statistics.fmean(dated)
    else:
        all_dated = [f.mjd for f in classification.frames if f.mjd is not None]
        ref_mjd = statistics.median(all_dated) if all_dated else 0.0
        notes.append("no science frame: calibrations nearest to the middle of the data "
                     "set were chosen")
    chosen: dict[str, dict[int, list[Frame]]] = {}
    for tag in calib_tags:
        rule = rules.calibration(tag)
        candidates = classification[tag]
        if rule.get("static"):
            pick = _nearest_static(candidates, ref_mjd)
            if len(candidates) > 1:
                notes.append(f"{tag}: {len(candidates)} files, took {pick[0].name}")
            by_unit = {k: pick for k in units} if pick else {}
        else:
            by_unit = {}
            need_all = bool(rule.get("all_units"))
            for k in units:
                want = set(units) if need_all else {k}
                pick = _nearest_set(candidates, rule, ref_values, ref_mjd, gap, want)
                if pick:
                    by_unit[k] = pick
        missing = [k for k in units if k not in by_unit]
        if missing:
            why = _why_none(tag, candidates, rule, ref_values, unit)
            if not rule.get("optional"):
                raise ValueError(f"no usable {tag}{_for(unit, missing)}: {why}")
            if candidates or by_unit:
                notes.append(f"{tag}: none usable{_for(unit, missing)}: {why}")
            by_unit = {} if len(missing) == len(units) or rule.get("all_units") else by_unit
        if by_unit:
            chosen[tag] = by_unit
    used = {f.path for by_unit in chosen.values() for fs in by_unit.values() for f in fs}
    used |= {f.path for f in science}
    unused = [f for f in classification.frames if f.path not in used]
    return Association(science, units, chosen, notes, rules, unused)


def _nearest_static(candidates: list[Frame], ref_mjd: float) -> list[Frame]:
    if not candidates:
        return []
    dated = [f for f in candidates if f.mjd is not None]
    if dated:
        return [min(dated, key=lambda f: (abs(f.mjd - ref_mjd), f.path))]
    return [sorted(candidates, key=lambda f: f.path)[-1]]


def _nearest_set(candidates, rule, ref_values, ref_mjd, gap, want_units) -> list[Frame]:
    usable = [f for f in candidates
              if all(_norm(f.meta.get(k)) == ref_values.get(k) for k in rule.get("match", [])
                     if k in ref_values)
              and want_units - {None} <= set(f.units)]
    sets = _sets(usable, rule.get("match", []), gap)
    sets = [s for s in sets if len(s) >= int(rule.get("min", 1))]
    if not sets:
        return []
    best = min(sets, key=lambda s: (abs(_mid(s) - ref_mjd), _mid(s)))
    n = rule.get("frames")
    if n:
        best = sorted(best, key=lambda f: (abs((f.mjd or 0.0) - ref_mjd), f.path))[:int(n)]
        best.sort(key=_time_order)
    return best


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


def _why_none(tag, candidates, rule, ref_values, unit: str = "unit") -> str:
    if not candidates:
        return f"no {tag} frame in the data"
    match = [k for k in rule.get("match", []) if k in ref_values]
    agree = [f for f in candidates
             if all(_norm(f.meta.get(k)) == ref_values[k] for k in match)]
    if not agree:
        want = ", ".join(f"{k}={ref_values[k]!r}" for k in match)
        return f"{len(candidates)} {tag} frame(s), none with {want} like the science frames"
    return (f"{len(agree)} matching {tag} frame(s), but no set of at least "
            f"{rule.get('min', 1)} holding the {unit}(s) needed")
