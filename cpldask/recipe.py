"""Client side: :class:`Recipe`, python-cpl's interface with calls that run on Dask.

The recipe library is loaded here, in the client, with python-cpl — for its
parameters, tags and documentation, and to validate a call before anything is
submitted. Running it is the worker's job (:mod:`cpldask.worker`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import hashlib
import io
import logging
import os
import pathlib
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import cpl
import dask
from astropy.io import fits
from cpl.frames import FrameList
from cpl.md5sum import update_md5
from cpl.param import ParameterList
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
import distributed
from distributed import Future

from . import _call, _cluster, _config, _submit, errors
from ._compat import Task, TaskRef
from ._logs import listen_to_logs, log_threshold
from ._spec import CallSpec, FileInput, MemoryInput, ProductRef
from .result import Result
from .worker.task import run_recipe

__all__ = ["Recipe", "cpl_versions"]

#: CPL versions whose recipes python-cpl's engine can run (python-cpl's name)
cpl_versions: list[str] = list(cpl.cpl_versions)

_load_lock = threading.Lock()  # python-cpl keeps its search path in a class attribute


class UnknownName(KeyError):
    """An unknown parameter or frame tag; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0])


def _unknown(what: str, key, recipe: str, names) -> UnknownName:
    names = sorted(set(names))
    close = difflib.get_close_matches(str(key), names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownName(f"{recipe} has no {what} {key!r}.{hint} Valid: {', '.join(names)}")


@contextlib.contextmanager
def _quiet_libraries():
    """Keep what recipe libraries print while they load out of the user's terminal.

    python-cpl loads every library on the path to find one recipe, and each pipeline
    library prints its own start-up messages (GIRAFFE, UVES: "Run-time version 7.2.3
    of CPL is higher than the version used to build...", "Creation of trap not
    supported..."): 90 lines for one ``Recipe('muse_bias')`` on a machine with three
    pipelines. C code writes them to file descriptors 1 and 2, past Python's
    ``sys.stdout``; they are caught there and go to the ``cpldask.libraries`` debug
    log instead."""
    with tempfile.TemporaryFile() as caught:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(caught.fileno(), 1)
            os.dup2(caught.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines():
                if line.strip():
                    _lib_log.debug("%s", line)


_lib_log = logging.getLogger("cpldask.libraries")


def _not_found(name: str, version, search: list[str]) -> OSError:
    known = [n for n, _ in _list_recipes()]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return OSError(
        f"Recipe {name!r}{f' version {version!r}' if version else ''} not found in "
        f"{':'.join(search) or '(empty path)'}.{hint} Set cpldask.Recipe.path, the "
        f"'cpldask.recipe-path' config key or DASK_CPLDASK__RECIPE_PATH to the "
        f"directory of its library.")


def _versions(name: str) -> str:
    return ", ".join(v for n, vs in _list_recipes() if n == name for v in vs) or "none"


def _list_recipes() -> list[tuple[str, list[str]]]:
    """python-cpl's list of the recipes on its path (set by the caller)."""
    with _quiet_libraries():
        return sorted(cpl.Recipe.list())


class _Params(ParameterList):
    """python-cpl's typed parameter list, with errors that name the valid choices."""

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except KeyError:
            raise _unknown("parameter", key, self._recipe.__name__,
                           [p.name for p in self._pars]) from None

    def __setitem__(self, key, value):
        par = self[key]
        if isinstance(par, cpl.Parameter) and value is not None:
            _check_type(par, value, self._recipe.__name__)
        try:
            super().__setitem__(key, value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self._recipe.__name__}: {value!r} is not a valid value "
                             f"for parameter {key!r}: {err}") from err

    def _for_call(self, overrides: dict | None) -> tuple[tuple, dict]:
        """The parameters of one call: ``(fullname, value)`` of those not at their
        default (what the worker passes to the recipe), and every parameter's
        value, defaults included (for provenance). ``overrides`` (the call's
        ``param=``) is validated as assignment would be, without touching this list.

        python-cpl copies the whole list for this (``_aslist``), rebuilding every
        parameter and wrapping its documentation with textwrap: a third of the
        client's time per call. Only the overridden parameters are copied here."""
        chosen = {p.fullname: p.value for p in self._pars}
        for key, value in _flatten(overrides or {}):
            par = self[key]
            if isinstance(par, ParameterList):  # a group set to None: all defaults
                chosen.update((p.fullname, None) for p in par)
                continue
            if value is not None:
                _check_type(par, value, self._recipe.__name__)
            scratch = copy.copy(par)
            try:
                scratch.value = value
            except (TypeError, ValueError) as err:
                raise ValueError(f"{self._recipe.__name__}: {value!r} is not a valid "
                                 f"value for parameter {key!r}: {err}") from err
            chosen[par.fullname] = scratch.value
        given = tuple((name, v) for name, v in chosen.items() if v is not None)
        resolved = {p.fullname: chosen[p.fullname] if chosen[p.fullname] is not None
                    else p.default for p in self._pars}
        return given, resolved


def _flatten(overrides: dict, prefix: str = ""):
    """``{'group': {'a': 1}}`` → ``('group.a', 1)``: python-cpl's nested groups."""
    for key, value in overrides.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


#: the strings python-cpl reads as a bool (``cpl.param.Parameter.value``)
_BOOL_WORDS = ("true", "false", "yes", "no")


def _check_type(par, value, recipe: str) -> None:
    """Refuse what python-cpl would silently convert (1.5 → 1 for an int).

    Strings are taken for every type, as python-cpl takes them: values read from an
    esorex ``.rc`` file or a command line are strings. python-cpl's conversion then
    turns ``'-2'`` into -2 and refuses ``'1.5'`` for an int."""
    kind = par.type
    ok = (isinstance(value, str)
          or kind is bool and isinstance(value, bool)
          or kind is int and isinstance(value, int) and not isinstance(value, bool)
          or kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
    if kind is bool and isinstance(value, str) and value.lower() not in _BOOL_WORDS:
        ok = False  # python-cpl's bool('maybe') would be True
    if not ok:
        raise TypeError(f"{recipe}: parameter {par.name!r} takes a {kind.__name__}, "
                        f"not {value!r} ({type(value).__name__})")


class _Calib(FrameList):
    """python-cpl's calibration frame list, with errors that name the valid tags."""

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except KeyError:
            raise _unknown("calibration tag", key, self._recipe.__name__, self._dict) from None

    def __setitem__(self, key, value):
        if self._cpl_dict is not None and key not in self._cpl_dict:
            raise _unknown("calibration tag", key, self._recipe.__name__, self._cpl_dict)
        super().__setitem__(key, value)

    def _aslist(self, frames):
        flist = _Calib(self._recipe, self)
        if frames is not None:
            flist._set_items(frames.items())
        return [(f.tag, f.frames, f.min) for f in flist]


class Recipe:
    """A CPL recipe whose calls run as tasks on a Dask cluster.

    The interface is python-cpl's :class:`cpl.Recipe`: ``param``, ``calib``, ``tag``,
    ``env``, ``output_dir``, ``threaded``, calling the recipe with raw frames. The
    difference is where the recipe runs: in a Dask worker process, on the
    :class:`distributed.Client` in use, or on an embedded
    :class:`~distributed.LocalCluster` started on first use.

    Parameters
    ----------
    name : str
        Recipe name, e.g. ``'muse_bias'``; see :meth:`Recipe.list`.
    version : int or str, optional
        Required version (number or string); the newest on the path otherwise.
    threaded : bool
        Run calls in the background: a call returns a pending :class:`Result` at once.
    path : list of str or str, optional
        Directories searched for the recipe (a list, or ``':'``-separated), for this
        recipe only; default: :attr:`Recipe.path`. Its calls' workers search the
        same directories.

    Examples
    --------
    >>> import cpldask as cpl
    >>> muse_bias = cpl.Recipe('muse_bias')
    >>> muse_bias.param.nifu = 1
    >>> res = muse_bias(['bias1.fits', 'bias2.fits', 'bias3.fits'])
    >>> res.MASTER_BIAS.writeto('master_bias.fits')
    >>> mine = cpl.Recipe('my_recipe', path='/opt/my-pipeline/lib')  # doctest: +SKIP
    """

    path: ClassVar[list[str] | str | None] = None
    """Recipe search path (directories searched recursively for ``*.so``). None: the
    ``cpldask.recipe-path`` config key (default: Debian's plugin directory)."""

    memory_mode: ClassVar[int] = 0
    """CPL's memory mode (python-cpl's ``Recipe.memory_mode``): 0 the system's
    allocator, 1 or 2 CPL's checking allocator. Given to recipe processes started
    afterwards as ``CPL_MEMORY_MODE``, which CPL reads when a recipe process starts."""

    def __init__(self, name: str, filename: str | os.PathLike | None = None,
                 version: int | str | None = None, threaded: bool = False, *,
                 path: Sequence[str | os.PathLike] | str | None = None):
        search = self.search_path(path)
        if filename is not None:
            filename = os.path.abspath(os.fspath(filename))
        with _load_lock:
            cpl.Recipe.path = search
            if filename is None:
                with _quiet_libraries():
                    filename = cpl.Recipe.get_recipefilename(name, version)
                if not filename:
                    raise _not_found(name, version, search)
            elif not os.path.isfile(filename):
                raise OSError(f"Recipe {name!r}: library {filename!r} does not exist; "
                              f"give the recipe's .so file or leave filename out to "
                              f"search {':'.join(search) or '(empty path)'}")
            try:
                with _quiet_libraries():
                    self._cpl = cpl.Recipe(name, filename=filename)
            except OSError as err:
                raise OSError(f"Recipe {name!r} cannot be loaded from {filename!r}: "
                              f"{err}") from err
            if version and version not in self._cpl.version:
                # python-cpl's rule: the newest version was found, not the one asked
                raise OSError(f"Recipe {name!r} has version {self._cpl.version[1]} "
                              f"({self._cpl.version[0]}) in {filename}, not "
                              f"{version!r}; versions on the path: {_versions(name)}")
        self.__name__ = name
        self.__file__ = filename
        self._search = tuple(search)
        self.__doc__ = self._cpl.__doc__  # python-cpl's text: parameters, tags, products
        self._param = _Params(self._cpl)
        self._defaults = {p.fullname: p.default for p in self._param}
        self._calib = _Calib(self._cpl)
        self._tag = self.tags[0] if self.tags else None
        self.env: dict[str, str] = {}
        """Environment of the recipe process (``OMP_NUM_THREADS`` works here)."""
        self.output_dir: str | None = None
        """Directory for the products; None: a work directory, products as HDULists."""
        self.temp_dir: str | None = None
        """Work directory for calls without ``output_dir``; None: ``cpldask.work-dir``."""
        self.threaded = threaded
        self.optional_calib: set[str] = set()
        """Calibration tags a call may leave out although the recipe declares at least
        one (cpldask refuses such a call on the client; python-cpl does not check).
        muse_scipost declares STD_RESPONSE so, and makes an uncalibrated cube without
        it: ``muse_scipost.optional_calib = {'STD_RESPONSE', 'EXTINCT_TABLE'}``."""
        self.memory_dump = 0
        """python-cpl's memory dump after the run (0, 1, 2): accepted, not used (the
        dump went to the recipe process's stdout, which a worker does not show)."""
        self.mtrace = False
        """python-cpl's glibc ``mtrace`` of the run: accepted, not used."""
        self.timeout: float | str | None = None
        """Wall-time limit of one call (seconds or ``"2 hours"``); None: config."""
        self.memory_limit: int | str | None = None
        """Address-space limit of the recipe process (bytes or ``"8 GiB"``)."""
        self.resources: dict = {}
        """Dask worker resources every call needs, e.g. ``{'memory': '8 GiB'}``
        (``memory``/``cores`` mean Dask's MEMORY and CORES resources, which cpldask's
        workers offer): a call then runs only on a worker that offers them, and one
        no worker offers is refused before it is submitted."""
        self.needs: dict = {}
        """What every call needs where the cluster models it, e.g. ``{'memory':
        '2 GiB'}``: as :attr:`resources`, but a resource no worker offers at all is
        ignored (workers started without resources take any call). An instrument's
        rules set it per step (``workflow.resources``); ``resources`` overrides it."""

    # -- python-cpl's descriptive attributes ----------------------------------------
    @classmethod
    def search_path(cls, path: Sequence[str | os.PathLike] | str | None = None
                    ) -> list[str]:
        """The directories searched for recipes, in order: ``path`` (a list or a
        ``':'``-separated string), else :attr:`Recipe.path`, else the
        ``cpldask.recipe-path`` config key.

        Examples
        --------
        >>> cpl.Recipe.search_path('/a:/b')
        ['/a', '/b']
        """
        if path is None:
            path = cls.path
        return _config.split_path(path) if path is not None else _config.recipe_path()

    @property
    def name(self) -> str:
        return self.__name__

    @property
    def version(self) -> tuple[int, str]:
        """``(number, string)``, e.g. ``(20807, '2.8.7')``."""
        return self._cpl.version

    @property
    def __version__(self) -> str:
        return self._cpl.__version__

    @property
    def __author__(self) -> str:
        return self._cpl.__author__

    @property
    def __email__(self) -> str:
        return self._cpl.__email__

    @property
    def __copyright__(self) -> str:
        return self._cpl.__copyright__

    @property
    def description(self) -> tuple[str, str]:
        """``(synopsis, description)``."""
        return self._cpl.description

    @property
    def cpl_version(self) -> str:
        return self._cpl.cpl_version

    @property
    def tags(self) -> list[str] | None:
        """Tags the recipe accepts for raw frames."""
        return self._cpl.tags

    @property
    def tag(self) -> str | None:
        """Default tag of raw frames in a call."""
        return self._tag

    @tag.setter
    def tag(self, value: str) -> None:
        self._check_tag(value)
        self._tag = value

    @property
    def output(self) -> dict[str, list[str]]:
        """Product tags by raw tag, e.g. ``{'BIAS': ['MASTER_BIAS']}``."""
        return self._cpl.output

    @property
    def param(self) -> _Params:
        """The recipe parameters (typed; range and enum checked on assignment)."""
        return self._param

    @param.setter
    def param(self, source) -> None:
        if isinstance(source, str) or hasattr(source, "read"):
            from cpl.esorex import load_rc

            source = load_rc(source)
        self._param = _Params(self._cpl, source)

    @param.deleter
    def param(self) -> None:
        self._param = _Params(self._cpl)

    @property
    def calib(self) -> _Calib:
        """Calibration frames by tag: paths, HDULists or results of other calls."""
        return self._calib

    @calib.setter
    def calib(self, source) -> None:
        if isinstance(source, str) or hasattr(source, "read"):
            from cpl.esorex import load_sof

            source = load_sof(source)
        self._calib = _Calib(self._cpl, source)

    @calib.deleter
    def calib(self) -> None:
        self._calib = _Calib(self._cpl)

    def __repr__(self) -> str:
        return f"Recipe({self.__name__!r}, version={self.version[0]!r})"

    # -- calls ------------------------------------------------------------------------
    def __call__(self, *data, raw=None, tag: str | None = None, param: dict | None = None,
                 calib: dict | None = None, env: dict | None = None,
                 output_dir: str | os.PathLike | None = None, threaded: bool | None = None,
                 logname: str | None = None, loglevel: int | None = None,
                 mtrace: bool | None = None,
                 timeout: float | str | None = None,
                 memory_limit: int | str | None = None,
                 resources: dict | None = None, cache: bool | None = None) -> Result:
        """Run the recipe on raw frames; see python-cpl's ``Recipe.__call__``.

        Parameters
        ----------
        *data : path, HDUList, Result, Delayed, list of these, or dict {tag: frames}
            Raw input frames (tagged ``tag``), or a dict of frames by tag.
        raw : same as data, optional
            More raw input frames.
        tag : str, optional
            Tag of the raw frames; default :attr:`tag`.
        param, calib, env : dict, optional
            Override parameters, calibration frames and environment for this call.
        output_dir : path, optional
            Write the products there (a result then gives paths, not HDULists).
        threaded : bool, optional
            Return at once with a pending result; default :attr:`threaded`.
        logname : str, optional
            The :mod:`logging` logger of the recipe's messages (default
            ``'cpl.<recipe>'``); a message of function ``f`` goes to ``logname.f``.
        loglevel : int, optional
            The lowest level of message kept in the result's ``log`` and sent to
            :mod:`logging` (``logging.INFO``...; default: all).
        mtrace : bool, optional
            python-cpl's glibc memory trace: accepted, not used.
        timeout, memory_limit : optional
            Kill the recipe after this wall time; limit its address space.
        resources : dict, optional
            Dask worker resources the call needs, e.g. ``{'memory': '8 GiB',
            'cores': 4}`` (over :attr:`resources` and :attr:`needs`): it then runs
            only on workers that offer enough of them; one that no worker offers is
            a ValueError before anything is submitted.
        cache : bool, optional
            Use the product cache (default: ``cpldask.cache.enabled``): a call whose
            recipe, parameters and input contents were run before returns the
            earlier products without starting the recipe.

        Returns
        -------
        Result
            Finished (``threaded=False``) or pending (``threaded=True``).

        Raises
        ------
        ValueError, KeyError, TypeError, InputError, OSError
            Bad input, found before anything is submitted.
        cpl.CplError, cpl.RecipeCrash, RecipeTimeout
            On the call (or, in the background, when a product is read).
        """
        call = self._build(data, raw=raw, tag=tag, param=param, calib=calib, env=env,
                           output_dir=output_dir, timeout=timeout,
                           memory_limit=memory_limit, resources=resources, cache=cache,
                           logname=logname, loglevel=loglevel, direct=True)
        background = self.threaded if threaded is None else threaded
        res = Result(call.submit(batch=background), self.__name__,
                     output=call.spec.output_dir, defaults=self._defaults,
                     described=call.spec.provenance)
        if call.spec.slots is None:
            _cluster.track_unguarded(call.client, res)
        _cluster.learn_duration(call.client, res)  # (where jobs end: see CallSpec.expected)
        if not background:
            res.result()
        return res

    def delayed(self, *data, raw=None, tag: str | None = None, param: dict | None = None,
                calib: dict | None = None, env: dict | None = None,
                output_dir: str | os.PathLike | None = None,
                timeout: float | str | None = None,
                memory_limit: int | str | None = None,
                resources: dict | None = None, cache: bool | None = None) -> Delayed:
        """The call as a :func:`dask.delayed` node, to build graphs of recipes.

        Computing it gives the worker's :class:`~cpldask.RunRecord`, whose attributes
        are product paths; ``node.MASTER_BIAS`` is itself usable as an input.

        Examples
        --------
        >>> bias = muse_bias.delayed(bias_files, param={'nifu': 1})
        >>> dark = muse_dark.delayed(dark_files, calib={'MASTER_BIAS': bias})
        >>> (record,) = dask.compute(dark)
        >>> record.MASTER_DARK
        '/tmp/cpldask-user/muse_dark-.../MASTER_DARK.fits'
        """
        # (_build makes the client the default: dask.compute runs the graph there)
        return self._build(data, raw=raw, tag=tag, param=param, calib=calib, env=env,
                           output_dir=output_dir, timeout=timeout,
                           memory_limit=memory_limit, resources=resources,
                           cache=cache).node

    def _build(self, data, *, raw, tag, param, calib, env, output_dir, timeout,
               memory_limit, resources, cache, logname: str | None = None,
               loglevel: int | None = None, direct: bool = False) -> _Call:
        """Validate a call on the client and turn it into a task."""
        tag = tag if tag is not None else self._tag
        self._check_tag(tag)
        raw_frames = self._raw(data, raw, tag)
        if not raw_frames:
            raise ValueError(f"{self.__name__}: no raw frames given; call it with the "
                             f"input files, e.g. {self.__name__}(['a.fits', 'b.fits'])")
        first = raw_frames[0][1]
        out = os.fspath(output_dir if output_dir is not None else self.output_dir or "") or None
        if out is not None:
            out = str(pathlib.Path(out).expanduser().absolute())
            _check_output_dir(out, self.__name__)
        work_dir = str(pathlib.Path(self.temp_dir).absolute()) if self.temp_dir \
            else str(_config.work_dir())
        deps: list = []
        frames = [(ftag, self._input(item, ftag, deps))
                  for ftag, value in raw_frames + self._calib_frames(calib, raw_frames)
                  for item in (value if _is_list(value) else [value])]
        client = _cluster.get_client()  # once the input is known to be good
        deps = [_scatter(client, d) if isinstance(d, _InMemory) else d for d in deps]
        logname = logname or f"cpl.{self.__name__}"
        listen_to_logs(client)
        slots, omp = _cluster.slots_for_call(client, direct=direct)
        run_env = {**self.env, **(env or {})}
        if self.memory_mode:
            run_env.setdefault("CPL_MEMORY_MODE", str(self.memory_mode))
        raw_tags = tuple(t for t, _ in raw_frames)
        input_len = len(first) if _is_list(first) else -1
        given, resolved = self._param._for_call(param)
        provenance, input_key = self._provenance(resolved, frames, deps, run_env, raw_tags)
        key, content = _call._task_key(provenance, input_key, raw_tags=raw_tags,
                                       input_len=input_len, output_dir=out,
                                       library=self.__file__, client=client)
        if cache is False:  # asked to run the recipe now: not even a shared task
            key = f"{key}-{uuid.uuid4().hex[:8]}"
        spec = CallSpec(
            recipe=self.__name__, version=self.version[0], recipe_path=self._search,
            recipe_file=self.__file__,
            params=given, frames=tuple(frames),
            raw_tags=raw_tags,
            env=tuple(sorted((str(k), str(v)) for k, v in run_env.items())),
            output_dir=out, work_dir=work_dir,
            expect=tuple(self.output.get(tag, ()) if self.tags else ()),
            input_len=input_len,
            timeout=_config.seconds(_config.get(
                "timeout", timeout if timeout is not None else self.timeout)),
            memory_limit=_config.nbytes(_config.get(
                "memory-limit", memory_limit if memory_limit is not None else self.memory_limit)),
            backtrace=bool(_config.get("backtrace")), omp_threads=omp,
            work_max_age=_config.seconds(_config.get("work-dir-max-age")),
            cache_dir=str(_config.cache_dir()) if _config.get("cache.enabled", cache) else None,
            cache_key=content, provenance=provenance, slots=slots, submitted=time.time(),
            expected=_cluster.expected_duration(client, provenance),
            log_level=max(log_threshold(logname), loglevel or 0), logname=logname,
            loglevel=loglevel or 0, live_level=_config.log_level("live-log-level"))
        # the recipe's and the call's resources are strict; its needs (a workflow
        # step's, from the instrument's rules) only where the cluster models them
        resources = _cluster.call_resources({**self.resources, **(resources or {})},
                                            self.__name__)
        if resources:
            resources = _cluster.check_resources(client, resources, self.__name__)
        if self.needs:
            resources = {**_cluster.check_resources(
                client, _cluster.call_resources(self.needs, self.__name__),
                self.__name__, strict=False), **resources}
        return _Call(key, spec, tuple(deps), resources, client)

    def _calib_frames(self, calib, raw_frames) -> list[tuple[str, Any]]:
        """The calibration frames of a call, the required ones checked."""
        out = []
        for ctag, frames, minimum in self._calib._aslist(calib):
            if frames is None or (isinstance(frames, list) and not frames):
                if (minimum or 0) > 0 and ctag not in dict(raw_frames) \
                        and ctag not in self.optional_calib:
                    raise ValueError(f"{self.__name__} needs calibration {ctag} "
                                     f"(at least {minimum}); give calib={{'{ctag}': ...}}")
                continue
            out.append((ctag, frames))
        return out

    def _provenance(self, params: dict, frames, deps, env, raw_tags) -> tuple[dict, list]:
        """What the client knows of how the products will be made: the first half of
        the provenance record, and the inputs' part of the task key."""
        inputs, input_key = _call.inputs(self.__name__, params, frames, deps, raw_tags)
        return {"recipe": self.__name__, "recipe_version": self.version[1],
                "cpl_version": self.cpl_version, "params": params,
                "inputs": inputs, "env": dict(sorted(env.items()))}, input_key

    def _raw(self, data, raw, tag) -> list[tuple[str, Any]]:
        """python-cpl's grouping of raw inputs into (tag, frames)."""
        items = list(data) + ([raw] if raw is not None else [])
        groups: dict[str, Any] = {}
        for item in items:
            if isinstance(item, dict):
                for t in item:
                    self._check_tag(t)
                groups.update(item)
            elif tag is None:
                raise ValueError(f"{self.__name__} declares no raw tags; give tag=...")
            elif tag not in groups:
                groups[tag] = list(item) if _is_list(item) else item
            elif isinstance(groups[tag], list):
                groups[tag].extend(item if _is_list(item) else [item])
            else:
                groups[tag] = [groups[tag], *(item if _is_list(item) else [item])]
        return [(t, v) for t, v in groups.items()
                if v is not None and not (isinstance(v, list) and not v)]

    def _input(self, item, tag: str, deps: list):
        """One input frame as the worker will see it."""
        if isinstance(item, Result):
            deps.append(item.future)
            return ProductRef(len(deps) - 1, tag)
        if isinstance(item, (Delayed, Future)):
            deps.append(item)
            return ProductRef(len(deps) - 1, tag)
        if isinstance(item, fits.HDUList):
            deps.append(_InMemory.of(item))
            return MemoryInput(len(deps) - 1, deps[-1].digest)
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"{self.__name__}: input {tag} must be a file path, an "
                            f"HDUList or a result, not {type(item).__name__}")
        path = os.path.abspath(os.path.expanduser(os.fspath(item)))
        _call.check_file(path, recipe=self.__name__, tag=tag)
        return FileInput(path)

    def _check_tag(self, tag) -> None:
        if self.tags is not None and tag not in self.tags:
            raise _unknown("raw tag", tag, self.__name__, self.tags)

    # -- class-wide ------------------------------------------------------------------
    @staticmethod
    def list(*, path: Sequence[str | os.PathLike] | str | None = None
             ) -> list[tuple[str, list[str]]]:
        """Recipes on the search path (``path``, default :attr:`Recipe.path`):
        ``[(name, [version strings]), ...]``."""
        with _load_lock:
            cpl.Recipe.path = Recipe.search_path(path)
            return _list_recipes()

    @staticmethod
    def set_maxthreads(n: int) -> None:
        """Run at most ``n`` recipes at once, for calls started afterwards.

        On the embedded cluster the default is one recipe per core; on a cluster you
        brought, one per worker thread. See :mod:`cpldask._cluster` for how.
        """
        _cluster.set_maxthreads(n)


@dataclasses.dataclass(frozen=True)
class _Call:
    """One validated call: the task ``run_recipe(spec, *deps)`` under ``key``."""

    key: str
    spec: CallSpec
    deps: tuple  # upstream results' futures, delayed calls or futures
    resources: dict
    client: distributed.Client  # the one the call was validated for

    @property
    def node(self) -> Delayed:
        """The call as a :func:`dask.delayed` node.

        It is ``dask.delayed(run_recipe)(spec, *deps, dask_key_name=key)``, built
        directly: ``dask.delayed`` walks every argument looking for collections,
        dataclasses included, field by field through the spec, its frames and its
        provenance (a third of the client's time per call). Only ``deps`` can hold
        collections, so only they are looked at.
        """
        args, upstream = [self.spec], []
        for dep in self.deps:
            if isinstance(dep, Delayed):
                args.append(TaskRef(dep.key))
                upstream.append(dep)
            else:  # a distributed.Future is itself a reference to its task
                args.append(dep)
        layer = {self.key: Task(self.key, run_recipe, *args)}
        with dask.annotate(**({"resources": self.resources} if self.resources else {})):
            graph = HighLevelGraph.from_collections(self.key, layer, dependencies=upstream)
        return Delayed(self.key, graph)

    def submit(self, *, batch: bool = False) -> Future | _submit.Pending:
        """Start the task; the future of its outcome. With ``batch`` (a background
        call) the task may be sent with others a moment later: then the ticket of
        its future (see :mod:`cpldask._submit`)."""
        client = self.client
        if batch and _submit.batchable(self):
            return _submit.add(self)
        _submit.flush(client)  # the tasks this one names go to the scheduler first
        if any(isinstance(dep, Delayed) for dep in self.deps):
            return client.compute(self.node, optimize_graph=False)
        # The same task as self.node, handed over as such: Client.compute would
        # spend 0.4 ms per call in dask's expression optimizer on this one-task
        # graph, Client.submit 0.1 ms (10 000 calls: 4 s less to submit).
        return client.submit(run_recipe, self.spec, *self.deps, key=self.key,
                             resources=self.resources or None)


def _is_list(item) -> bool:
    return isinstance(item, (list, tuple)) and not isinstance(item, fits.HDUList)


@dataclasses.dataclass(frozen=True)
class _InMemory:
    """An in-memory frame (an ``HDUList``) of a call: its FITS bytes, named by their
    content. python-cpl writes such a frame into its temporary directory before the
    run; here it travels as data of the graph (:func:`_scatter`), so that a worker
    without the client's filesystem gets it too, and the worker writes it."""

    digest: str
    data: bytes

    @classmethod
    def of(cls, hdulist: fits.HDUList) -> "_InMemory":
        """Serialise ``hdulist`` as it is now (changes made in memory included).

        As python-cpl does, its ``DATAMD5`` keyword is set first (in the caller's
        object too): recipes copy it into their products' ``PRO REC`` keywords."""
        update_md5(hdulist)
        buffer = io.BytesIO()
        try:
            hdulist.writeto(buffer, output_verify="exception")
        except Exception as err:  # noqa: BLE001  (astropy's VerifyError, ValueError...)
            raise errors.InputError(f"an in-memory input frame cannot be written as FITS: "
                                    f"{err}; fix its header (hdulist.verify('fix'))") from err
        data = buffer.getvalue()
        return cls(hashlib.md5(data).hexdigest(), data)


def _scatter(client, frame: _InMemory) -> Future:
    """The frame's bytes as a future on the cluster, keyed by content (the worker
    names its file by it)."""
    key = f"cpldask-frame-{frame.digest}"
    return client.scatter({key: frame.data}, hash=False)[key]


def _check_output_dir(path: str, recipe: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise OSError(f"{recipe}: cannot create output_dir {path!r}: {err.strerror}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{recipe}: output_dir {path!r} is not writable; choose "
                              f"another output_dir")
