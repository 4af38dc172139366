"""Issue 21.4: where the command line's calls run — ``--cluster SYSTEM`` for one
command, and ``cpldask cluster start/status/stop``, a cluster in a background server
that later commands and sessions join through its scheduler file.

The fast tier checks the options and the refusals (no CPL; one test starts a server
that fails to bind). The ``requires_cpl`` test starts a real server of the local
kind, runs test-recipe calls on it from ``cpldask run --scheduler-file`` and from a
fresh Python through the ``cpldask.scheduler-file`` key, and stops it. The same
on SLURM, and ``--cluster slurm`` for one command: tests/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import distributed
import pytest
from astropy.io import fits

from cpldask._cli import _daemon, handle_args
from helpers import max_overlap, wait_until

#: cpldask._cli imports python-cpl; only the test marked requires_cpl runs recipes
pytestmark = pytest.mark.requires_python_cpl


def one_error_line(capsys) -> str:
    """The single ``cpldask: error:`` line a usage error prints (nothing on stdout)."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cpldask: error: "), captured.err
    assert captured.out == ""
    return lines[0]


# -- the options ----------------------------------------------------------------------
EXCLUSIVE = {
    "cluster and scheduler": (["--cluster", "slurm", "--scheduler", "tcp://h:8786"],
                              "argument --scheduler: not allowed with argument --cluster"),
    "cluster and file": (["--cluster", "local", "--scheduler-file", "s.json"],
                         "argument --scheduler-file: not allowed with argument --cluster"),
    "scheduler and file": (["--scheduler", "tcp://h:8786", "--scheduler-file", "s.json"],
                           "not allowed with argument --scheduler"),
    "unknown system": (["--cluster", "torque"], "invalid choice: 'torque'"),
}


@pytest.mark.parametrize("command", ["run", "reduce", "demo"])
@pytest.mark.parametrize("options, message", list(EXCLUSIVE.values()), ids=list(EXCLUSIVE))
def test_where_the_calls_run_is_one_choice(command, options, message, capsys):
    argv = {"run": ["run", "cpldask_test", "x.fits"], "reduce": ["reduce", "raw"],
            "demo": ["demo"]}[command]
    assert handle_args([*argv, *options]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("argv", [["run", "cpldask_test", "x.fits", "--cluster", "slurm"],
                                  ["reduce", "raw", "--cluster", "pbs", "--dry-run"],
                                  ["cluster", "start", "--cluster", "lsf"]],
                         ids=["run", "reduce", "cluster start"])
def test_a_batch_cluster_without_dask_jobqueue_names_the_extra(argv, monkeypatch, capsys):
    """Refused before any input is read (x.fits and raw/ do not exist)."""
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # as if not installed
    assert handle_args(argv) == 2
    line = one_error_line(capsys)
    assert f"--cluster {argv[argv.index('--cluster') + 1]} needs dask-jobqueue" in line
    assert "pip install 'cpldask[hpc]'" in line


def test_joining_a_missing_scheduler_file_names_the_command_that_writes_it(tmp_path, capsys):
    """Not distributed's 30-s wait for the file to appear, then "timed out"."""
    missing = tmp_path / "none.json"
    assert handle_args(["reduce", str(tmp_path), "--scheduler-file", str(missing)]) == 2
    assert (f"--scheduler-file: scheduler file {missing} does not exist: start a cluster "
            f"that writes it with 'cpldask cluster start --scheduler-file {missing}'"
            in one_error_line(capsys))


def test_the_scheduler_file_defaults(monkeypatch, tmp_path):
    import dask

    assert _daemon.scheduler_file(None) == pathlib.Path("~/.cpldask/scheduler.json").expanduser()
    assert _daemon.scheduler_file("rel/s.json") == pathlib.Path.cwd() / "rel" / "s.json"
    with dask.config.set({"cpldask.scheduler-file": str(tmp_path / "k.json")}):
        assert _daemon.scheduler_file(None) == tmp_path / "k.json"
        assert _daemon.scheduler_file(str(tmp_path / "o.json")) == tmp_path / "o.json"
    assert _daemon.log_file(tmp_path / "k.json") == tmp_path / "k.log"


# -- status and stop without a running cluster ------------------------------------------
def test_status_and_stop_when_nothing_runs(tmp_path, capsys):
    missing = str(tmp_path / "none.json")
    assert handle_args(["cluster", "status", "--scheduler-file", missing]) == 1
    assert f"no cluster: {missing} does not exist" in capsys.readouterr().err
    assert handle_args(["cluster", "stop", "--scheduler-file", missing]) == 0
    assert f"no cluster to stop: {missing} does not exist" in capsys.readouterr().out


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_stale_scheduler_file_is_reported_and_removed(tmp_path, monkeypatch, capsys):
    """The file of a server that died without stop (kill -9, a reboot): nothing
    listens at its address, its process is gone."""
    monkeypatch.setattr(_daemon, "ANSWER_TIMEOUT", 0.5)  # a refused port, not a slow one
    path = tmp_path / "stale.json"
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    path.write_text(json.dumps({"type": "Scheduler", "id": "Scheduler-x", "address": address,
                                "cpldask": {"pid": _dead_pid(), "host": socket.gethostname(),
                                            "system": "local"}}))
    assert handle_args(["cluster", "status", "--scheduler-file", str(path)]) == 1
    assert f"names {address}, which does not answer" in capsys.readouterr().err
    assert handle_args(["cluster", "stop", "--scheduler-file", str(path)]) == 0
    assert "does not answer; removed its file" in capsys.readouterr().out
    assert not path.exists()


def test_a_file_that_is_no_scheduler_file(tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text("not json")
    for action in ("status", "stop", "start"):
        assert handle_args(["cluster", action, "--scheduler-file", str(path)]) == 2
        assert "is not a scheduler file" in one_error_line(capsys)
    assert path.read_text() == "not json"  # left as it was


def test_a_server_that_cannot_start_says_why(tmp_path, capsys):
    """192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine: the scheduler
    cannot bind, and `cluster start` says so from the server's own error."""
    path = tmp_path / "s.json"
    code = handle_args(["cluster", "start", "--slots", "1", "--host", "192.0.2.1",
                        "--scheduler-file", str(path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "the cluster did not start" in err and "Cannot assign requested address" in err
    assert f"log: {tmp_path / 's.log'}" in err
    assert not path.exists()
    assert "Traceback" in (tmp_path / "s.log").read_text()  # the whole story is there


# -- a local server, joined -------------------------------------------------------------
def write_sof(path: pathlib.Path, files: list[str]) -> pathlib.Path:
    path.write_text("".join(f"{f} RAW\n" for f in files))
    return path


def _server_ran(path: pathlib.Path, prefix: str) -> bool:
    """Whether the scheduler of ``path`` has seen tasks of ``prefix``."""
    with distributed.Client(scheduler_file=str(path), set_as_default=False) as client:
        return client.run_on_scheduler(
            lambda dask_scheduler: prefix in dask_scheduler.task_prefixes)


#: a fresh Python that joins through the config key: no client, no --scheduler-file
JOIN = """
import json, sys, cpldask
res = cpldask.Recipe("cpldask_test")(sys.argv[1], output_dir=sys.argv[2])
print(json.dumps({"address": cpldask.get_client().scheduler.address,
                  "worker": res.record.worker, "product": res.paths["PRODUCT"][0]}))
"""


@pytest.mark.requires_cpl
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_started_cluster_is_joined_by_commands_and_sessions(any_fits, testrecipe_dir,
                                                              tmp_path, capsys):
    path = tmp_path / "cluster" / "scheduler.json"
    where = ["--scheduler-file", str(path)]
    assert handle_args(["cluster", "start", "--cluster", "local", "--slots", "2", *where]) == 0
    try:
        out = capsys.readouterr().out
        doc = json.loads(path.read_text())  # distributed's scheduler file, and cpldask's part
        assert doc["type"] == "Scheduler" and doc["address"].startswith("tcp://127.0.0.1:")
        server = doc["cpldask"]
        assert server["system"] == "local" and server["slots"] == 2
        assert server["host"] == socket.gethostname()
        assert f"started a local cluster (pid {server['pid']}): {doc['address']}" in out
        assert pathlib.Path(server["log"]) == tmp_path / "cluster" / "scheduler.log"
        # the server is nobody's child here: its parent is init (or a subreaper)
        assert server["pid"] not in _children()

        # a second start on the same file is refused; the first cluster is untouched
        assert handle_args(["cluster", "start", *where]) == 2
        assert "a cluster runs already" in one_error_line(capsys)

        # cpldask run joins it: two 2-second calls at once on its 2 slots
        sofs = [write_sof(tmp_path / f"s{i}.sof", [any_fits] * i) for i in (1, 2)]
        code = handle_args(["run", "cpldask_test", "--sof", *map(str, sofs), "--param",
                            "sleep=2", *where, "--output-dir", str(tmp_path / "out")])
        assert code == 0, capsys.readouterr()
        assert _server_ran(path, "cpldask_test")
        products = sorted((tmp_path / "out").glob("s*/PRODUCT_0000.fits"))
        spans = [(fits.getheader(p)["ESO QC ECHO TSTART"], fits.getheader(p)["ESO QC ECHO TEND"])
                 for p in products]
        assert len(spans) == 2 and max_overlap(spans) == 2

        # a session with the config key set joins it too (cpldask.get_client())
        env = {**os.environ, "DASK_CPLDASK__SCHEDULER_FILE": str(path),
               "DASK_CPLDASK__RECIPE_PATH": str(testrecipe_dir)}
        proc = subprocess.run([sys.executable, "-c", JOIN, any_fits, str(tmp_path / "s")],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        joined = json.loads(proc.stdout)
        assert joined["address"] == doc["address"]

        capsys.readouterr()
        assert handle_args(["cluster", "status", "--json", *where]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["address"] == doc["address"] and status["pid"] == server["pid"]
        assert status["workers"] == 2 and status["slots_connected"] == status["slots"] == 2
        with distributed.Client(doc["address"], set_as_default=False) as client:
            assert joined["worker"] in client.scheduler_info(n_workers=-1)["workers"]
            worker_pids = set(client.run(os.getpid).values())
        assert handle_args(["cluster", "status", *where]) == 0
        text = capsys.readouterr().out
        assert "slots      2 connected, up to 2" in text and f"file       {path}" in text
    finally:
        code = handle_args(["cluster", "stop", *where])
    assert code == 0
    assert f"stopped the local cluster at {doc['address']}" in capsys.readouterr().out
    assert not path.exists()
    assert not _daemon._alive(server["pid"])  # stop returns once the server has ended
    wait_until(lambda: not any(_daemon._alive(p) for p in worker_pids), 30, "the workers to end")
    assert handle_args(["cluster", "status", *where]) == 1
    log = (tmp_path / "cluster" / "scheduler.log").read_text()
    assert "ready: " in log and log.rstrip().endswith("stopped")


def _children() -> set[int]:
    """PIDs of this process's children (from /proc)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == os.getpid():
                pids.add(int(entry))
    return pids
