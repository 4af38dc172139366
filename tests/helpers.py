"""Small helpers shared by tests (no fixtures here)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from astropy.io import fits


def intervals(results) -> list[tuple[float, float]]:
    """(start, end) of each test-recipe run, read from its product headers (written
    by the recipe process itself)."""
    out = []
    for res in results:
        path = res.paths["PRODUCT"][0]
        h = fits.getheader(path)
        out.append((h["ESO QC ECHO TSTART"], h["ESO QC ECHO TEND"]))
    return out


def max_overlap(spans) -> int:
    """Largest number of intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


#: every process this test session starts inherits this variable (workers, fork
#: servers, recipe processes): recipe_pids counts the session's own recipes only, not
#: those of another test run on the same machine
TEST_SESSION = os.environ.setdefault("CPLDASK_TEST_SESSION", f"{os.getpid()}-{time.time()}")


def recipe_pids(name: str, *, any_session: bool = False) -> set[int]:
    """PIDs of live processes named ``name`` (python-cpl names the recipe child so)
    started by this test session (``any_session``: by anyone — for processes in batch
    jobs, whose environment is the batch system's, the caller filters by job).

    Zombies do not count: a killed recipe whose parent died too waits for PID 1 to
    reap it, which in a container may never happen; it runs no code.
    """
    pids = set()
    mark = f"CPLDASK_TEST_SESSION={TEST_SESSION}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            state = stat[stat.rindex(")") + 2]
            if comm != name[:15] or state in "ZX":
                continue
            if any_session:
                pids.add(int(entry))
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    ours = mark in f.read().split(b"\0")
            except OSError:
                continue
            if ours:
                pids.add(int(entry))
    return pids


def wait_until(condition, timeout: float, what: str):
    """Wait for a condition of another process (a recipe starting, a process
    ending) that no future or event of ours can signal; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


#: A cpldask session of its own, for tests that run one as a script (``python
#: script.py LIB_DIR CACHE_DIR INPUT WORK_DIR``): the test recipe from LIB_DIR, the
#: product cache in CACHE_DIR, one worker with one slot. Append the body, indented
#: under ``if __name__ == "__main__":``.
SESSION = """
import sys, time, warnings, cpldask, dask
from astropy.io import fits
cpldask.Recipe.path = [sys.argv[1]]
with dask.config.set({"cpldask.cache.dir": sys.argv[2], "cpldask.cache.enabled": True,
                      "cpldask.local.n-workers": 1, "cpldask.local.slots": 1,
                      "cpldask.local.dashboard-address": ":0",
                      "cpldask.work-dir": sys.argv[4]}):
    if __name__ == "__main__":
"""


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: DevTools events that report an error of the page
CONSOLE_ERRORS = ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


class Browser:
    """Headless Chromium driven over the DevTools protocol: ``goto``, ``evaluate``,
    ``screenshot``, ``console_errors``. Its own profile directory (removed on
    ``close``), debugging port on 127.0.0.1 only."""

    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 60):
        if CHROMIUM is None:
            raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="cpldask-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="cpldask-devtools")
        self._thread.start()
        self._ws = None
        self._id = 0
        #: the page's error events (CONSOLE_ERRORS) read so far, as DevTools sent them
        self.errors: list[dict] = []
        try:
            page = self._page_target()
            self._ws = self._run(self._connect(page["webSocketDebuggerUrl"]))
            self.call("Page.enable")
            self.call("Runtime.enable")  # console messages and uncaught exceptions
            self.call("Log.enable")  # the browser's own: failed loads, security
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _page_target(self) -> dict:
        """The DevTools port Chromium chose (it writes it to DevToolsActivePort) and
        the websocket of its one page."""
        port_file = pathlib.Path(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        return next(t for t in targets if t.get("type") == "page")

    @staticmethod
    async def _connect(url: str):
        from tornado.websocket import websocket_connect

        return await websocket_connect(url, max_message_size=1 << 28)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout + 5)

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events are skipped, the
        page's errors kept in ``errors``)."""
        self._id += 1
        ident = self._id

        async def roundtrip():
            await self._ws.write_message(json.dumps(
                {"id": ident, "method": method, "params": params}))
            while True:
                msg = await asyncio.wait_for(self._ws.read_message(), self.timeout)
                if msg is None:
                    raise ConnectionError("the DevTools connection closed")
                msg = json.loads(msg)
                if _is_error(msg):
                    self.errors.append(msg)
                if msg.get("id") == ident:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]

        return self._run(roundtrip())

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def load(self, url: str) -> None:
        """Open ``url`` and wait until the page and its images have loaded."""
        self.errors.clear()
        self.goto(url)
        self.wait_for("document.readyState === 'complete' && "
                      "[...document.images].every(i => i.complete)")

    def wait_for(self, expression: str):
        """Wait until a JavaScript expression is true in the page (what the page's
        own loading and decoding do: no event of ours tells when it is done)."""
        deadline = time.monotonic() + self.timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {self.timeout} s: {expression}")
            time.sleep(0.05)
        return value

    def console_errors(self) -> list[str]:
        """The page's errors since :meth:`load`: console.error() calls, uncaught
        exceptions, and what the browser logs as an error (a resource that failed to
        load, a blocked request). Reading it first answers a command, which brings
        every event sent before it."""
        self.evaluate("0")
        out = []
        for msg in self.errors:
            p = msg.get("params", {})
            if msg["method"] == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails", {}).get("text")))
            elif msg["method"] == "Runtime.consoleAPICalled":
                out.append(" ".join(str(a.get("value", a.get("description")))
                                    for a in p.get("args", [])))
            else:
                out.append(str(p.get("entry", {}).get("text")))
        return out

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able values)."""
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"JavaScript error: {out['exceptionDetails']}")
        return out["result"].get("value")

    def screenshot(self, path, clip: dict | None = None) -> pathlib.Path:
        params = {"format": "png"}
        if clip is not None:
            params.update(clip={**clip, "scale": 1}, captureBeyondViewport=True)
        data = self.call("Page.captureScreenshot", **params)["data"]
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self._ws is not None:
                self._loop.call_soon_threadsafe(self._ws.close)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def _is_error(msg: dict) -> bool:
    method, params = msg.get("method"), msg.get("params", {})
    if method == "Runtime.exceptionThrown":
        return True
    if method == "Runtime.consoleAPICalled":
        return params.get("type") in ("error", "assert")
    if method == "Log.entryAdded":
        return params.get("entry", {}).get("level") == "error"
    return False


_ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- workers that share no disk (tests/test_nofs.py, bench/transfer.py) -------------------
def _namespace_script(visible: list[str]) -> str:
    """The shell run by ``unshare`` as ``sh -c SCRIPT sh PRIVATE COMMAND...``: ``/tmp``
    becomes the directory PRIVATE, the ``visible`` directories are bound back read-only
    (through a staging tmpfs on /mnt, since the new /tmp hides the old one), then
    COMMAND is exec'd."""
    lines = ["set -e", 'private=$1; shift', "mount -t tmpfs -o size=1m cpldask-stage /mnt"]
    for i, d in enumerate(visible):
        lines += [f"mkdir -p /mnt/v{i}", f"mount --bind {shlex.quote(d)} /mnt/v{i}"]
    lines.append('mount --bind "$private" /tmp')
    for i, d in enumerate(visible):
        lines += [f"mkdir -p {shlex.quote(d)}", f"mount --bind /mnt/v{i} {shlex.quote(d)}",
                  f"mount -o remount,bind,ro {shlex.quote(d)}"]
    lines.append('exec "$@"')
    return "\n".join(lines)


def _under_tmp(*paths) -> list[str]:
    """Those of ``paths`` that lie under /tmp (resolved), with no one inside another."""
    tmp = os.path.realpath("/tmp")
    found = sorted({os.path.realpath(str(p)) for p in paths})
    found = [p for p in found if p.startswith(tmp + os.sep)]
    return [p for p in found if not any(p != q and p.startswith(q + os.sep) for q in found)]


def isolating_command(visible: list[str]) -> list[str]:
    """The command prefix that runs ``PRIVATE COMMAND...`` (appended to it) in a mount
    namespace of its own, whose ``/tmp`` is the directory PRIVATE and in which only the
    ``visible`` directories under /tmp can be seen (read-only) besides it.

    The checkout and the Python environment are visible too, wherever they are: a CI
    clone or its venvs under /tmp would be hidden by the private /tmp (the worker's
    exec failed)."""
    visible = sorted({*visible, *_under_tmp(_ROOT, sys.prefix, sys.base_prefix,
                                            os.path.dirname(os.path.realpath(sys.executable)))})
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            _namespace_script(visible), "sh"]


@contextlib.contextmanager
def isolated_cluster(base: pathlib.Path, visible: list[str], *, n: int = 2,
                     threads: int = 1):
    """A scheduler here and ``n`` workers, each in a mount namespace of its own; the
    tests make its client the current one (``with client.as_current()``: cpldask's calls
    go there). Yields
    ``(client, [worker addresses], [private dirs as the test process sees them])``."""
    import distributed

    cluster = distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp://",
                                       host="127.0.0.1", dashboard_address=":0")
    procs, privates = [], []
    # the workers import this checkout's cpldask (the tasks name its functions)
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
           "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        for i in range(n):
            private = base / f"node{i}-tmp"
            private.mkdir(parents=True)
            privates.append(private)
            command = [sys.executable, "-m", "distributed.cli.dask_worker",
                       cluster.scheduler_address, "--name", f"node{i}",
                       "--nthreads", str(threads), "--nworkers", "1",
                       "--local-directory", "/tmp/dask-worker", "--no-dashboard",
                       "--host", "127.0.0.1"]
            with open(base / f"node{i}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [*isolating_command(visible), str(private), *command],
                    env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                    stdout=log, stderr=subprocess.STDOUT))
        with distributed.Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=120)
            yield client, _by_name(client), privates
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.close()


def _by_name(client) -> list[str]:
    """The addresses of the client's workers, sorted by worker name."""
    workers = client.scheduler_info()["workers"]
    return sorted(workers, key=lambda a: str(workers[a]["name"]))


def squeue() -> list[str]:
    """Job ids in the SLURM queue (all of them: the tests' SLURM is theirs alone)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return sorted(out.split())


@contextlib.contextmanager
def isolated_slurm_cluster(base: pathlib.Path, visible: list[str], *, n: int = 2,
                           memory_per_slot: str = "4 GiB", walltime: str = "01:00:00"):
    """:func:`isolated_cluster` with SLURM jobs as the workers: a cpldask SLURM cluster
    of ``n`` one-slot jobs whose worker each runs in a mount namespace of its own
    (:func:`isolating_command`), with a private ``/tmp`` made for the job
    (``base/job-<id>-XXXXXX``). What dask-jobqueue's job script runs as its Python
    (its ``python=`` option, as a site whose nodes need a wrapper would set
    ``jobqueue.slurm.python``) is a shell script written here: it makes the directory,
    then execs ``unshare ... python -m distributed.cli.dask_worker ...``. Yields
    ``(client, [worker addresses], [private dirs])``; ``client.cluster.job_ids()``
    names each worker's job. The client is not made the default one."""
    import cpldask.cluster

    wrapper = base / "isolated-python.sh"
    wrapper.write_text("\n".join([
        "#!/bin/sh",
        "# run by a SLURM job as: sh isolated-python.sh -m distributed.cli.dask_worker ...",
        "set -e",
        f"private=$(mktemp -d {shlex.quote(str(base))}/job-${{SLURM_JOB_ID:-none}}-XXXXXX)",
        f"exec {shlex.join(isolating_command(visible))} \"$private\" "
        f"{shlex.quote(sys.executable)} \"$@\"", ""]))
    assert squeue() == [], "the SLURM queue must start empty"
    # the jobs inherit this environment (sbatch's --export=ALL): PYTHONPATH names the
    # checkout whose cpldask the tasks import
    cluster = cpldask.cluster.slurm(
        slots=n, minimum_slots=n, adapt=False, memory_per_slot=memory_per_slot,
        walltime=walltime, python=f"sh {shlex.quote(str(wrapper))}",
        log_directory=str(base / "slurm-logs"), set_as_default=False)
    try:
        cluster.client.wait_for_workers(n, timeout=180)
        yield cluster.client, _by_name(cluster.client), sorted(base.glob("job-*"))
    finally:
        cluster.close()
        wait_until(lambda: squeue() == [], 60, "the jobs to leave the queue")
