"""Batch job scripts and their configuration (cpldask.cluster, through dask-jobqueue):
the fast tier — nothing is submitted, no SLURM, no CPL.

``job_script()`` renders the script dask-jobqueue would submit for one job, so what a
user configures can be checked against the batch systems' own directives: SLURM's
``sbatch`` options (``--cpus-per-task``, ``--mem``, ``-t`` in ``D-HH:MM:SS`` forms),
PBS ``select=...:ncpus=...:mem=...``, SGE ``h_rt``, LSF ``-n``/``-W HH:MM``. The
running clusters are tested in test_slurm.py; here, clusters that never submit a job
(a scheduler in this process, no job: nothing reaches a batch system).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import dask
import dask_jobqueue
import distributed
import pytest
from distributed.core import Status

import cpldask.cluster
from cpldask import _compat


def test_job_script_maps_recipe_slots_onto_a_job():
    script = cpldask.cluster.job_script("slurm", slots_per_job=2, cores_per_slot=3,
                                        memory_per_slot="3 GiB", walltime="02:00:00")
    assert "#SBATCH --cpus-per-task=6" in script  # 2 slots x 3 cores
    assert "#SBATCH --mem=6G" in script  # 2 slots x 3 GiB
    assert "#SBATCH -t 02:00:00" in script
    assert "export OMP_NUM_THREADS=3" in script  # per slot
    worker = script.strip().splitlines()[-1]
    assert worker.startswith(sys.executable)  # the venv's python runs the worker
    assert worker.count("--nthreads") == 1 and "--nthreads 2" in worker  # 1 thread/slot
    assert "--nworkers" not in worker  # one worker process per job
    # leave 5 minutes (give or take 1) before the walltime, by draining
    # (cpldask.worker.jobend), not by dask's --lifetime
    assert "export CPLDASK_JOB_END=$(( $(date +%s) + 6900 + RANDOM % 121 - 60 ))" in script
    assert "--lifetime" not in worker
    assert "--interface lo" in worker  # nothing listens beyond this machine by default


def test_a_site_wrapper_runs_each_jobs_worker():
    """dask-jobqueue's ``python`` (argument or ``jobqueue.slurm.python``) is what the job
    script runs the worker with: a wrapper (a container, a mount namespace as
    tests/test_nofs.py's SLURM cascade uses) gets ``-m distributed.cli.dask_worker
    ...`` as its arguments, after cpldask's own exports."""
    wrapper = "sh /opt/site/in-container.sh"
    with dask.config.set({"jobqueue.slurm.python": wrapper}):
        script = cpldask.cluster.job_script("slurm", cores_per_slot=2)
    assert cpldask.cluster.job_script("slurm", cores_per_slot=2, python=wrapper) == script
    lines = script.strip().splitlines()
    assert lines[-1].startswith(f"{wrapper} -m distributed.cli.dask_worker tcp://")
    assert lines.index("export OMP_NUM_THREADS=2") < len(lines) - 1


def test_walltime_forms_and_lifetime():
    ws = cpldask.cluster.walltime_seconds
    assert ws("00:10:00") == ws("10") == ws("10:00") == ws("10 minutes") == 600
    assert ws("1-02:30", "slurm") == 95400 and ws("02:30", "lsf") == 9000
    assert ws(3600, "pbs") == ws("3600", "pbs") == 3600
    fw = cpldask.cluster.format_walltime
    assert fw(3599.5, "slurm") == "01:00:00" and fw(3599, "lsf") == "01:00"
    # margin capped at a quarter of the walltime, stagger at half the margin
    assert cpldask.cluster.lifetime(3600) == (3300, 60)
    assert cpldask.cluster.lifetime(600) == (450, 60)
    assert cpldask.cluster.lifetime(120, stagger="1 minute") == (90, 15)
    assert cpldask.cluster.lifetime(3600, margin=None) == (3300, 60)
    with dask.config.set({"cpldask.jobqueue.lifetime-margin": None}):
        assert cpldask.cluster.lifetime(3600) is None
        assert "CPLDASK_JOB_END" not in cpldask.cluster.job_script("slurm")


@pytest.mark.parametrize("system, header, wall", [
    ("pbs", "#PBS -l select=1:ncpus=4:mem=8192MB", "#PBS -l walltime=01:30:00"),
    ("sge", "#$ -N cpldask", "#$ -l h_rt=01:30:00"),
    ("lsf", "#BSUB -n 4", "#BSUB -W 01:30"),
])
def test_pbs_sge_lsf_through_the_same_path(system, header, wall):
    script = cpldask.cluster.job_script(system, slots_per_job=2, cores_per_slot=2,
                                        memory_per_slot="4 GiB", walltime="90 minutes")
    assert header in script and wall in script
    assert "export OMP_NUM_THREADS=2" in script
    assert "--nthreads 2" in script and "+ 5100 +" in script


def test_defaults_come_from_yaml_and_environment(tmp_path):
    """~/.config/dask/*.yaml and DASK_CPLDASK__JOBQUEUE__* drive the defaults, and
    dask-jobqueue's own jobqueue.slurm section still applies."""
    (tmp_path / "site.yaml").write_text(
        "cpldask:\n  jobqueue:\n    memory-per-slot: 6 GiB\n    walltime: 4 hours\n"
        "jobqueue:\n  slurm:\n    queue: muse\n    account: eso\n")
    env = {**os.environ, "DASK_CONFIG": str(tmp_path),
           "DASK_CPLDASK__JOBQUEUE__CORES_PER_SLOT": "4"}
    out = subprocess.run(
        [sys.executable, "-c", "import cpldask.cluster as c; print(c.job_script())"],
        env=env, capture_output=True, text=True, check=True, timeout=60).stdout
    for line in ("#SBATCH -p muse", "#SBATCH -A eso", "#SBATCH --mem=6G",
                 "#SBATCH -t 04:00:00", "#SBATCH --cpus-per-task=4",
                 "export OMP_NUM_THREADS=4", "+ 14100 +"):
        assert line in out, (line, out)


def test_unknown_system_and_raw_job_sizes_are_refused():
    with pytest.raises(ValueError, match="slurm, pbs, sge, lsf"):
        cpldask.cluster.job_script("condor")
    with pytest.raises(TypeError, match="slots_per_job, cores_per_slot"):
        cpldask.cluster.job_script("slurm", cores=8)


def _worker_line(script: str) -> list[str]:
    """The dask worker command of a job script, split into arguments."""
    return script.strip().splitlines()[-1].split()


def test_users_worker_arguments_come_after_ours_so_theirs_win():
    # dask's worker CLI (click) takes the last of a repeated option
    with dask.config.set({"jobqueue.slurm.worker-extra-args": ["--lifetime", "100s"]}):
        args = _worker_line(cpldask.cluster.job_script("slurm", walltime="01:00:00"))
    positions = [i for i, a in enumerate(args) if a == "--lifetime"]
    assert [args[i + 1] for i in positions] == ["100s"]


def test_prologue_from_config_runs_before_the_omp_export():
    with dask.config.set({"jobqueue.slurm.job-script-prologue": ["module load muse"]}):
        lines = cpldask.cluster.job_script("slurm", cores_per_slot=4).splitlines()
    assert lines.index("module load muse") < lines.index("export OMP_NUM_THREADS=4")


def test_interface_from_config_and_scheduler_host():
    with dask.config.set({"cpldask.jobqueue.interface": "ib0"}):
        assert _worker_line(cpldask.cluster.job_script("slurm"))[-2:] == ["--interface", "ib0"]
    # a scheduler host named in dask-jobqueue's own section: no loopback default
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"host": "10.0.0.1"}}):
        kw = cpldask.cluster.options("slurm")
    assert kw["interface"] is None and kw["scheduler_options"]["host"] == "10.0.0.1"


def test_slurm_walltime_forms_reach_the_script():
    # sbatch --time: "minutes", "minutes:seconds", "hours:minutes:seconds",
    # "days-hours", "days-hours:minutes", "days-hours:minutes:seconds"
    for given, directive in (("90", "01:30:00"), ("90:30", "01:30:30"),
                             ("1-00", "24:00:00"), ("1-02:30", "26:30:00"),
                             ("2 hours", "02:00:00")):
        script = cpldask.cluster.job_script("slurm", walltime=given)
        assert f"#SBATCH -t {directive}" in script, given


def test_batch_cpu_request_can_be_configured_in_dask_jobqueues_section():
    with dask.config.set({"jobqueue.slurm.job-cpu": 16}):
        script = cpldask.cluster.job_script("slurm", slots_per_job=2, cores_per_slot=3)
    assert "#SBATCH --cpus-per-task=16" in script
    assert "export OMP_NUM_THREADS=3" in script  # the recipes' threads stay per slot


def test_options_pass_dask_jobqueue_arguments_through():
    kw = cpldask.cluster.options("pbs", slots_per_job=3, memory_per_slot="2 GiB",
                                 queue="long", account="eso")
    assert kw["queue"] == "long" and kw["account"] == "eso"
    assert kw["cores"] == 3 and kw["processes"] == 1  # one worker, a thread per slot
    assert kw["memory"] == f"{3 * 2 * 2**30}B"
    assert "export OMP_NUM_THREADS=1" in kw["job_script_prologue"]


def test_without_dask_jobqueue_the_error_names_the_extra():
    # a Python without dask-jobqueue (None in sys.modules makes its import fail)
    code = ("import sys; sys.modules['dask_jobqueue'] = None\n"
            "import cpldask.cluster\n"
            "print(cpldask.cluster.options('slurm')['cores'])\n"
            "for name in ('job_script', 'slurm', 'SLURMCluster'):\n"
            "    try:\n"
            "        x = getattr(cpldask.cluster, name)\n"
            "        x('slurm') if name == 'job_script' else x() if name == 'slurm' else x\n"
            "    except ImportError as err:\n"
            "        print(name, err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    assert out[0] == "1"  # options() needs no dask-jobqueue
    for line, name in zip(out[1:], ("job_script", "slurm", "SLURMCluster"), strict=True):
        assert line.startswith(name) and "pip install 'cpldask[hpc]'" in line


# -- the cluster classes, on clusters that never submit a job ---------------------------
@pytest.fixture
def no_dashboard_port():
    """Dashboards on a free port: 8787 may be another test's (or engineer's)."""
    with dask.config.set({"cpldask.jobqueue.dashboard-address": "127.0.0.1:0"}):
        yield {"dashboard_address": "127.0.0.1:0"}


@pytest.mark.parametrize("system", ["slurm", "pbs", "sge", "lsf"])
def test_one_class_per_batch_system_subclassing_dask_jobqueues(system):
    name = cpldask.cluster.SYSTEMS[system]
    cls = getattr(cpldask.cluster, name)
    assert cls.__name__ == name and cls.__module__ == "cpldask._jobqueue"
    assert issubclass(cls, getattr(dask_jobqueue, name))
    assert issubclass(cls.job_cls, getattr(dask_jobqueue, name).job_cls)


def test_slurm_returns_a_cpldask_slurm_cluster_with_dask_jobqueues_script(
        no_dashboard_port):
    cluster = cpldask.cluster.slurm(slots=2, adapt=False, cores_per_slot=2,
                                    set_as_default=False)
    plain = dask_jobqueue.SLURMCluster(**cpldask.cluster.options("slurm", cores_per_slot=2))
    try:
        assert isinstance(cluster, cpldask.cluster.SLURMCluster)
        assert isinstance(cluster, dask_jobqueue.SLURMCluster)
        assert not cluster.adapting and cluster.workers == {}  # nothing submitted
        # cpldask's options in the script dask-jobqueue writes, nothing else changed
        ours = cluster.job_script().replace(cluster.scheduler_address, "<scheduler>")
        theirs = plain.job_script().replace(plain.scheduler_address, "<scheduler>")
        assert ours == theirs
        assert "#SBATCH --cpus-per-task=2" in ours and "export OMP_NUM_THREADS=2" in ours
    finally:
        plain.close()
        cluster.close()
    assert cluster.client is None and cluster.status == Status.closed


def test_a_cancelled_job_is_marked_closed():
    """dask-jobqueue's Job.close leaves the status alone; a SpecCluster that still
    holds such a Job fails its close (test_slurm.py's test_omp_threads_per_slot... holds
    one on real SLURM)."""
    kw = cpldask.cluster.options("slurm")
    kw.pop("scheduler_options")
    theirs = dask_jobqueue.slurm.SLURMJob("tcp://127.0.0.1:1", name="x", **kw)
    ours = cpldask.cluster.SLURMCluster.job_cls("tcp://127.0.0.1:1", name="x", **kw)
    for job in (theirs, ours):
        asyncio.run(job.close())  # no job id: nothing to scancel
    assert ours.status == Status.closed
    assert theirs.status != Status.closed, (
        "dask-jobqueue now marks closed jobs closed: cpldask._jobqueue.ClosingJob can go")


def test_set_maxthreads_caps_an_adaptive_cluster(no_dashboard_port):
    cluster = cpldask.cluster.slurm(slots=4, minimum_slots=0, slots_per_job=2,
                                    set_as_default=False)
    try:
        assert cluster.adapting and cluster.adaptive is _compat.adaptive_of(cluster)
        assert (cluster.adaptive.minimum, cluster.adaptive.maximum) == (0, 2)  # jobs
        assert cpldask.cluster.scale_to_slots(cluster.client, 5)
        assert cluster.adapting and cluster.adaptive.maximum == 3  # 5 slots: 3 jobs
        cluster.scale_slots(0)
        assert not cluster.adapting and cluster.adaptive.state == "stopped"
    finally:
        cluster.close()


def test_set_maxthreads_on_a_plain_dask_jobqueue_cluster(no_dashboard_port):
    """A cluster made without cpldask: its jobs' threads are the slots. Its job size
    comes from dask-jobqueue's own configuration here, which the cluster's spec does
    not hold (the job resolves it)."""
    with dask.config.set({"jobqueue.slurm.cores": 4, "jobqueue.slurm.processes": 2,
                          "jobqueue.slurm.memory": "2 GiB"}):
        cluster = dask_jobqueue.SLURMCluster(interface="lo",
                                             scheduler_options=no_dashboard_port)
        client = distributed.Client(cluster, set_as_default=False)
        try:
            assert cpldask.cluster._job_shape(cluster) == (4, 2)
            cluster.adapt(minimum_jobs=0, maximum_jobs=1)  # no work: no job submitted
            assert cpldask.cluster.scale_to_slots(client, 10)
            adaptive = _compat.adaptive_of(cluster)
            assert adaptive is not None, "distributed renamed Cluster._adaptive"
            # 10 slots = 3 jobs of 4 threads; Adaptive counts workers, 2 a job
            assert (adaptive.minimum, adaptive.maximum) == (0, 6)
        finally:
            client.close()
            cluster.close()


def test_ctrl_c_stays_a_keyboard_interrupt_with_dask_jobqueue():
    """dask-jobqueue 0.9.0 makes SIGINT call sys.exit() on import (dask/dask-jobqueue
    #696): a Ctrl-C of ``cpldask run --cluster slurm`` then exited 0 without
    cancelling anything. cpldask.cluster gives it back (a fresh Python: this one
    imported dask_jobqueue at the top); a program's own handler is kept."""
    code = ("import signal, dask_jobqueue, cpldask.cluster\n"
            "print(getattr(signal.getsignal(signal.SIGINT), '__module__', None))\n"
            "cpldask.cluster.SLURMCluster\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
            "mine = lambda *_: None\n"
            "signal.signal(signal.SIGINT, mine)\n"
            "cpldask.cluster.PBSCluster\n"
            "print(signal.getsignal(signal.SIGINT) is mine)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    # (the first line shows what dask-jobqueue did; a fixed release prints builtins)
    assert out[1:] == ["True", "True"], out
