"""python-cpl's :mod:`cpl.esorex`: reading esorex's configuration and log settings.

The same functions and objects as python-cpl's module, so that a script written for
python-cpl works with ``import cpldask as cpl``:

* :func:`load_sof` and :func:`load_rc` read a set-of-frames and an esorex ``.rc``
  file (python-cpl's own functions);
* :data:`msg` and :data:`log` are python-cpl's terminal and file loggers: the recipe
  messages cpldask replays into :mod:`logging` reach them as python-cpl's do;
* :func:`init` sets up both and the recipe search path from ``~/.esorex/esorex.rc``
  — the search path of :class:`cpldask.Recipe`, not of python-cpl's class.

Examples
--------
>>> import cpldask as cpl
>>> cpl.esorex.init()                      # ~/.esorex/esorex.rc
>>> muse_bias = cpl.Recipe('muse_bias')
>>> muse_bias.calib = cpl.esorex.load_sof('bias.sof')
"""

from __future__ import annotations

from cpl.esorex import CplFileLogger, CplLogger, load_rc, load_sof, log, msg

from .recipe import Recipe

__all__ = ["init", "load_sof", "load_rc", "msg", "log", "CplLogger", "CplFileLogger"]


def init(source=None) -> None:
    """Set up the logging and the recipe search path from an esorex ``.rc`` file.

    Parameters
    ----------
    source : str or file, optional
        The file's content, or an open file; default ``~/.esorex/esorex.rc``.

    Examples
    --------
    >>> cpl.esorex.init('esorex.caller.recipe-dir=/opt/eso/plugins\\n')
    >>> cpl.Recipe.path
    ['/opt/eso/plugins']
    """
    rc = load_rc(source)
    # python-cpl's cpl.esorex.init, key by key, with cpldask's Recipe
    if "esorex.caller.recipe-dir" in rc:
        Recipe.path = rc["esorex.caller.recipe-dir"].split(":")
    if "esorex.caller.msg-level" in rc:
        msg.level = rc["esorex.caller.msg-level"]
    if "esorex.caller.log-level" in rc:
        log.level = rc["esorex.caller.log-level"]
    if "esorex.caller.log-dir" in rc:
        log.dir = rc["esorex.caller.log-dir"]
    if "esorex.caller.log-file" in rc:
        log.filename = rc["esorex.caller.log-file"]
