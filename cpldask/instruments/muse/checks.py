"""MUSE's checks of a raw frame before a call is submitted (see
:func:`cpldask.instruments.raw_frame_check`)."""

from __future__ import annotations

import re

from ...errors import InputError

#: MUSE recipes with ``nifu=k`` (1..24) read the image extension ``CHANkk`` of each raw
#: frame (MUSE pipeline user manual, section "Raw data": one extension per IFU, named
#: CHAN01..CHAN24; ``esorex --man-page muse_bias``: "nifu: IFU to handle"). Checked
#: for raw files of INSTRUME MUSE that hold CHANnn extensions at all (a reduced
#: frame given to muse_scibasic holds none).
_IFU_EXTENSION = re.compile(r"CHAN(\d\d)$")


def check_raw(recipe: str, params: dict, tag: str, path: str, hdus: list[dict]) -> None:
    """Refuse a raw MUSE frame without the IFU extension ``nifu`` asks for.

    ``hdus`` is what :func:`cpldask._call.check_file` read of the file's headers (the
    primary's keywords, then each extension's ``extname``).

    Raises
    ------
    cpldask.InputError
        Naming the file, the extension wanted and those it holds.
    """
    if not hdus or hdus[0].get("INSTRUME") != "MUSE":
        return
    nifu = next((v for k, v in params.items() if k.rsplit(".", 1)[-1] == "nifu"), None)
    if not isinstance(nifu, int) or not 1 <= nifu <= 24:
        return
    chans = [h["extname"] for h in hdus[1:] if _IFU_EXTENSION.match(str(h["extname"]))]
    want = f"CHAN{nifu:02d}"
    if chans and want not in chans:
        raise InputError(
            f"{recipe}: raw {tag} file {path!r} has no extension {want}, which nifu="
            f"{nifu} needs (it holds {', '.join(chans)}); give frames of IFU {nifu} "
            f"or set nifu to one of theirs")
