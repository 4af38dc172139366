"""Worker side: what a product's FITS headers say, read without astropy.

After every call the worker records a few primary-header values of each product
(``ESO PRO CATG``, ``DATAMD5``, the ``ESO QC`` keywords) and the shape of each HDU, so
that a :class:`~cpldask.RunRecord` can describe products without pixels. Parsing the
headers with astropy took a tenth of a no-op call's CPU; the FITS header format is
simple enough to read directly: 2880-byte blocks of 80-character cards up to ``END``,
then the data, whose size the header gives.

Anything unusual (``CONTINUE`` long strings, random groups, a truncated file) raises
:class:`Unsupported`, and the caller falls back to astropy.
"""

from __future__ import annotations

import math
import os
import re

BLOCK = 2880
CARD = 80

#: a FITS number: integer, or real with an E or D exponent
_INT = re.compile(r"[+-]?\d+$")
_REAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?$")


class Unsupported(ValueError):
    """A header this reader does not handle; use astropy instead."""


def headers(path: str) -> list[dict]:
    """The cards of every HDU of ``path``, as one ``{keyword: value}`` dict per HDU.

    Keywords as astropy names them (``'ESO PRO CATG'`` for a HIERARCH card); the first
    occurrence of a keyword wins; COMMENT, HISTORY and blank cards are left out.

    Examples
    --------
    >>> headers('MASTER_BIAS.fits')[0]['ESO PRO CATG']
    'MASTER_BIAS'
    """
    out = []
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        pos = 0
        while pos < size:
            f.seek(pos)
            cards, blocks = _read_header(f)
            out.append(cards)
            pos += blocks * BLOCK + math.ceil(_data_bytes(cards) / BLOCK) * BLOCK
    return out


def _read_header(f) -> tuple[dict, int]:
    cards: dict = {}
    blocks = 0
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise Unsupported("truncated header")
        blocks += 1
        for key, card in _cards(block):
            if key == "END":
                return cards, blocks
            if key == "CONTINUE":
                raise Unsupported("CONTINUE card")
            if key == "HIERARCH":
                name, eq, rest = card[9:].partition("=")
                if not eq:
                    continue
                key = " ".join(name.split())
            elif card[8:10] == "= ":
                rest = card[10:]
            else:
                continue  # COMMENT, HISTORY, blank
            cards.setdefault(key, _value(rest))


def _cards(block: bytes):
    """(keyword, card) of each 80-character card of a 2880-byte header block."""
    text = block.decode("ascii", errors="replace")
    for i in range(0, BLOCK, CARD):
        card = text[i:i + CARD]
        yield card[:8].rstrip(), card


def _value(text: str):
    """The value of a card (the text after ``= ``), its comment dropped."""
    text = text.strip()
    if text.startswith("'"):
        # a string: '' inside is a quote; trailing blanks are not significant
        value, i = [], 1
        while i < len(text):
            c = text[i]
            if c == "'":
                if text[i + 1:i + 2] == "'":
                    value.append("'")
                    i += 2
                    continue
                break
            value.append(c)
            i += 1
        return "".join(value).rstrip()
    text = text.split("/", 1)[0].strip()
    if text == "T":
        return True
    if text == "F":
        return False
    if _INT.match(text):
        return int(text)
    if _REAL.match(text):
        return float(text.replace("D", "E").replace("d", "e"))
    if not text:
        return None
    raise Unsupported(f"value {text!r}")


def _data_bytes(cards: dict) -> int:
    """Size of the data after a header, per the FITS standard (section 4.4.1)."""
    naxis = cards.get("NAXIS", 0)
    if not naxis:
        return 0
    if cards.get("GROUPS"):
        raise Unsupported("random groups")
    n = 1
    for i in range(1, naxis + 1):
        n *= cards[f"NAXIS{i}"]
    bits = abs(cards["BITPIX"])
    return bits // 8 * cards.get("GCOUNT", 1) * (cards.get("PCOUNT", 0) + n)


# -- what a RunRecord keeps of a product ------------------------------------------------
#: primary-header keywords kept for every product (small, useful in tables)
KEEP = ("ESO PRO CATG", "ESO PRO REC1 ID", "DATAMD5", "NAXIS1", "NAXIS2")
#: numpy dtype of a FITS BITPIX
_BITPIX = {8: "uint8", 16: "int16", 32: "int32", 64: "int64", -32: "float32", -64: "float64"}


def summary(path: str) -> tuple[dict, tuple]:
    """(kept primary-header values, HDU shapes) of a product, from its headers only.

    The kept values are :data:`KEEP` and every ``ESO QC`` keyword. The shapes are
    ``(name, shape, dtype)`` of each HDU holding data, in numpy order, e.g.
    ``('DATA', (3681, 24, 301), 'float32')``; a table gives ``(rows,)`` and
    ``'table, N columns'``; a tile-compressed image its image shape.

    Examples
    --------
    >>> kept, hdus = summary('MASTER_BIAS.fits')
    >>> kept['ESO PRO CATG'], hdus[0]
    ('MASTER_BIAS', ('DATA', (4112, 4224), 'float32'))
    """
    try:
        cards = headers(path)
    except Unsupported:
        cards = astropy_headers(path)
    except OSError:
        return {}, ()
    if not cards:
        return {}, ()
    primary = cards[0]
    kept = {k: primary[k] for k in KEEP if k in primary}
    kept.update({k: v for k, v in primary.items() if k.startswith("ESO QC")})
    return kept, tuple(filter(None, (hdu_shape(c, i) for i, c in enumerate(cards))))


def hdu_shape(cards: dict, index: int) -> tuple | None:
    name = cards.get("EXTNAME", "PRIMARY" if index == 0 else "")
    if cards.get("ZIMAGE"):  # a tile-compressed image, stored as a binary table
        naxes = [cards.get(f"ZNAXIS{i}", 0) for i in range(1, cards.get("ZNAXIS", 0) + 1)]
        bitpix = cards.get("ZBITPIX")
    elif cards.get("XTENSION") in ("BINTABLE", "TABLE"):
        return name, (int(cards.get("NAXIS2", 0)),), f"table, {cards.get('TFIELDS', 0)} columns"
    else:
        naxes = [cards.get(f"NAXIS{i}", 0) for i in range(1, cards.get("NAXIS", 0) + 1)]
        bitpix = cards.get("BITPIX")
    if not naxes or not all(naxes):
        return None
    return name, tuple(int(n) for n in reversed(naxes)), _BITPIX.get(bitpix, f"BITPIX {bitpix}")


def astropy_headers(path: str) -> list[dict]:
    """The same as :func:`headers`, read by astropy (for what that does not handle)."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True,
                       disable_image_compression=True) as hdul:
            return [dict(hdu.header.items()) for hdu in hdul]
    except (OSError, ValueError):
        return []


# -- the structure of a file, for checking inputs before a call -------------------------
class BadFits(ValueError):
    """A file that is not a complete FITS file; the message says what is wrong."""


#: the keywords that fix where an HDU's data is and how long it is
_STRUCTURE = ("SIMPLE", "XTENSION", "EXTNAME", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT",
              "GROUPS", "INSTRUME")
#: the 2 bytes that start a gzip file (cfitsio reads .fits.gz transparently)
GZIP_MAGIC = b"\x1f\x8b"


def layout(path: str, size: int | None = None) -> list[dict]:
    """The HDUs of ``path`` from their headers alone: for each, ``extname``, the
    header's structural keywords and ``end``, the offset just past its data.

    Raises :class:`BadFits` for a file that does not start as FITS does, a header
    without ``END``, or data that the headers declare past the end of the file
    (a truncated file). Reads only the header blocks (FITS standard 4.0, sections
    3.3 and 4.4: 2880-byte blocks, data size from BITPIX, NAXISn, PCOUNT, GCOUNT).

    Examples
    --------
    >>> [h['extname'] for h in layout('MUSE.2019-01-01T01:00:00.fits')][:3]
    ['PRIMARY', 'CHAN01', 'CHAN02']
    """
    hdus: list[dict] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size if size is None else size
        pos = 0
        while pos < size:
            cards, blocks = _structure(fd, pos, size, len(hdus))
            if not blocks:
                break
            data = pos + blocks * BLOCK
            try:
                nbytes = _data_bytes(cards)
            except (KeyError, TypeError) as err:
                raise BadFits(f"HDU {len(hdus)} has a broken header "
                              f"(keyword {err} missing or not a number)") from None
            end = data + nbytes
            name = cards.get("EXTNAME") or ("PRIMARY" if not hdus else f"HDU {len(hdus)}")
            if end > size:
                raise BadFits(f"is truncated: {name} (HDU {len(hdus)}) declares "
                              f"{nbytes} bytes of data from byte {data}, but the file "
                              f"ends at byte {size}")
            hdus.append({**cards, "extname": name, "end": end})
            pos = data + math.ceil(nbytes / BLOCK) * BLOCK
    finally:
        os.close(fd)
    return hdus


def _structure(fd: int, pos: int, size: int, index: int) -> tuple[dict, int]:
    """The structural cards of the header at ``pos`` and its number of blocks."""
    cards: dict = {}
    blocks = 0
    while True:
        block = os.pread(fd, BLOCK, pos + blocks * BLOCK)
        if blocks == 0 and index == 0 and not block.startswith(b"SIMPLE  ="):
            what = "gzip-compressed" if block.startswith(GZIP_MAGIC) else "not FITS"
            raise BadFits(f"is {what}: a FITS file starts with 'SIMPLE  =', this one "
                          f"with {block[:16]!r}")
        if blocks == 0 and index > 0 and not block.startswith(b"XTENSION="):
            return {}, 0  # bytes after the last HDU (padding, "special records")
        if len(block) < BLOCK:
            raise BadFits(f"is truncated: the header of HDU {index} ends at byte "
                          f"{pos + blocks * BLOCK + len(block)} before its END card")
        blocks += 1
        for key, card in _cards(block):
            if key == "END":
                return cards, blocks
            if (key in _STRUCTURE or key.startswith("NAXIS")) and card[8:10] == "= " \
                    and key not in cards:
                try:
                    cards[key] = _value(card[10:])
                except Unsupported:
                    cards[key] = None
