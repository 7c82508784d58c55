"""The launchers in launch/ under DRY_RUN=1, and main.py's multi-process flags.

Each script runs in `bash` with a made-up environment (no variable of the
caller's shell leaks in) and a PATH whose first directory holds stubs:
`scontrol` and `gcloud ... describe` answer the read-only queries the scripts
make; every other `gcloud`, and `srun`, `python`, `python3`, fail loudly and
are logged, so a test sees it if a dry run would have started anything.
"""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from lxmert_jax import main as main_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASH = shutil.which("bash")
GIT = shutil.which("git")

# Every stub logs its call; the describe answer comes from STUB_TPU_STATE
# (unset: the slice does not exist) or STUB_DESCRIBE_ERROR.
_GCLOUD = """#!/bin/sh
echo "gcloud $*" >> "$STUB_LOG"
case "$*" in
  *"tpu-vm describe"*)
    if [ -n "${STUB_DESCRIBE_ERROR:-}" ]; then echo "ERROR: $STUB_DESCRIBE_ERROR" >&2; exit 1; fi
    if [ -n "${STUB_TPU_STATE:-}" ]; then echo "$STUB_TPU_STATE"; exit 0; fi
    echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource was not found" >&2
    exit 1;;
esac
echo "stub: gcloud must not run under DRY_RUN" >&2
exit 97
"""
_SCONTROL = """#!/bin/sh
echo "scontrol $*" >> "$STUB_LOG"
if [ "$1 $2 $3" = "show hostnames gpu[01-02]" ]; then printf 'gpu01\\ngpu02\\n'; fi
"""
_MUST_NOT_RUN = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
echo "stub: $(basename "$0") must not run under DRY_RUN" >&2
exit 97
"""
# For running a task's command line the way srun would: print what arrives.
_ECHO_PYTHON = """#!/bin/sh
echo "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-unset}"
for arg in "$@"; do echo "$arg"; done
"""

SLURM = dict(SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu[01-02]", SLURM_JOB_NUM_NODES="2",
             SLURM_GPUS_ON_NODE="8")
# JAX's own default port rule: 61440 + job id mod 4096.
SLURM_COORDINATOR = f"gpu01:{61440 + 4242 % 4096}"
TPU = dict(TPU="lxmert-v4-32", ZONE="us-central2-b", WORKDIR="gs://bucket/runs/base")
TPU_CREATE = dict(TPU, ACCELERATOR_TYPE="v4-32", RUNTIME_VERSION="tpu-ubuntu2204-base")


def _head() -> str:
  """The checkout's current commit, which tpu_pod.sh installs by default."""
  return subprocess.run([GIT, "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True,
                        check=True).stdout.strip()


def _write_executable(path, text: str) -> None:
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def stubs(tmp_path):
  """The stub directory and the log file every stub appends its call to."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_executable(bin_dir / "gcloud", _GCLOUD)
  _write_executable(bin_dir / "scontrol", _SCONTROL)
  for name in ("srun", "python", "python3"):
    _write_executable(bin_dir / name, _MUST_NOT_RUN)
  log = tmp_path / "calls.log"
  log.write_text("")
  return bin_dir, log


def _launch(stubs, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
  bin_dir, log = stubs
  full_env = dict(PATH=os.pathsep.join([str(bin_dir), os.path.dirname(GIT), "/usr/bin", "/bin"]),
                  HOME=str(bin_dir.parent), LC_ALL="C", STUB_LOG=str(log), DRY_RUN="1")
  full_env.update(env)
  return subprocess.run([BASH, os.path.join("launch", script), *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=30, check=False)


def _commands(result: subprocess.CompletedProcess) -> list[list[str]]:
  """The printed commands as argument lists; every line of stdout is one."""
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), result.stdout
  return [shlex.split(line[2:]) for line in lines]


def _calls(stubs) -> list[str]:
  return stubs[1].read_text().splitlines()


def _option(argv: list[str], name: str) -> str:
  """The value of `name=VALUE` in argv (exactly one)."""
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def _assert_refused(result: subprocess.CompletedProcess, variable: str) -> None:
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert variable in result.stderr, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stdout == ""


# --- launch/gpu_node.sh ---------------------------------------------------


def test_gpu_node_single_node_runs_one_process_without_distributed_flags(stubs):
  (argv,) = _commands(_launch(stubs, "gpu_node.sh", "--config.mesh.fsdp=8", WORKDIR="runs/base"))
  assert argv[0] == "env"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in _option(argv, "XLA_FLAGS").split()
  assert _option(argv, "XLA_PYTHON_CLIENT_MEM_FRACTION") == "0.9"
  assert argv[3:] == ["python", "-m", "lxmert_jax.main", "--config=configs/pretrain.py",
                      "--workdir=runs/base", "--config.mesh.fsdp=8"]
  assert _calls(stubs) == []


def test_gpu_node_multi_node_passes_the_explicit_flags(stubs):
  # A KEY=VALUE argument beats the environment.
  result = _launch(stubs, "gpu_node.sh", "NODE_RANK=1", "CONFIG=configs/vqa.py:demo",
                   "--config.data.dir=/data", WORKDIR="/shared/run", NNODES="2", NODE_RANK="0",
                   COORDINATOR="10.0.0.1:61234", PYTHON=".venv/bin/python",
                   XLA_FLAGS="--xla_dump_to=/tmp/x")
  (argv,) = _commands(result)
  python = argv.index(".venv/bin/python")
  assert argv[python:] == [".venv/bin/python", "-m", "lxmert_jax.main",
                           "--config=configs/vqa.py:demo", "--workdir=/shared/run",
                           "--coordinator_address=10.0.0.1:61234", "--num_processes=2",
                           "--process_id=1", "--config.data.dir=/data"]
  assert _option(argv, "XLA_FLAGS").startswith("--xla_dump_to=/tmp/x --xla_gpu_")
  # JAX never reads these; the flags replace them.
  assert "JAX_NUM_PROCESSES" not in result.stdout and "JAX_PROCESS_ID" not in result.stdout
  assert "LXMERT_JAX_DISTRIBUTED" not in result.stdout


@pytest.mark.parametrize("env, variable", [
    (dict(), "WORKDIR"),
    (dict(WORKDIR="r", CONFIG="configs/missing.py"), "CONFIG"),
    (dict(WORKDIR="r", NNODES="0"), "NNODES"),
    (dict(WORKDIR="r", NNODES="two"), "NNODES"),
    (dict(WORKDIR="r", NNODES="2", NODE_RANK="2", COORDINATOR="h:1"), "NODE_RANK"),
    (dict(WORKDIR="r", NNODES="2", NODE_RANK="-1", COORDINATOR="h:1"), "NODE_RANK"),
    (dict(WORKDIR="r", NNODES="2"), "COORDINATOR"),
    (dict(WORKDIR="r", NNODES="2", COORDINATOR="10.0.0.1"), "COORDINATOR"),
    (dict(WORKDIR="r", NNODES="2", COORDINATOR="10.0.0.1:70000"), "COORDINATOR"),
    (dict(WORKDIR="r", DRY_RUN="yes"), "DRY_RUN"),
])
def test_gpu_node_refuses_a_missing_or_invalid_variable(stubs, env, variable):
  _assert_refused(_launch(stubs, "gpu_node.sh", **env), variable)


def test_gpu_node_refuses_an_unknown_variable(stubs):
  _assert_refused(_launch(stubs, "gpu_node.sh", "WORK_DIR=runs/x", WORKDIR="r"), "WORK_DIR")


# --- launch/gpu_slurm.sbatch ----------------------------------------------


def _srun_task(argv: list[str]) -> list[str]:
  """What srun starts on each task: everything after srun's own options."""
  assert argv[0] == "srun"
  return argv[argv.index("env"):]


def _run_task(tmp_path, task: list[str], procid: int, localid: int) -> list[str]:
  """Runs a task's command as srun would, with a `python` that prints its input."""
  bin_dir = tmp_path / "echo_bin"
  bin_dir.mkdir(exist_ok=True)
  _write_executable(bin_dir / "python", _ECHO_PYTHON)
  env = dict(PATH=os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]),
             SLURM_PROCID=str(procid), SLURM_LOCALID=str(localid))
  result = subprocess.run(task, env=env, capture_output=True, text=True, timeout=30, check=True)
  return result.stdout.splitlines()


def test_slurm_one_process_per_node(stubs, tmp_path):
  (argv,) = _commands(_launch(stubs, "gpu_slurm.sbatch", "--config.mesh.fsdp=-1",
                              WORKDIR="/shared/run", **SLURM))
  srun_options = argv[1:argv.index("env")]
  assert srun_options == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                          "--distribution=block", "--kill-on-bad-exit=1"]
  task = _srun_task(argv)
  assert "JAX_LOCAL_DEVICE_IDS" not in " ".join(task)
  python = task.index("python")
  assert task[python:] == ["python", "-m", "lxmert_jax.main", "--config=configs/pretrain.py",
                           "--workdir=/shared/run", f"--coordinator_address={SLURM_COORDINATOR}",
                           "--num_processes=2", "--config.mesh.fsdp=-1"]
  assert _calls(stubs) == ["scontrol show hostnames gpu[01-02]"]
  # Each task adds its own process id, and keeps all its node's GPUs.
  printed = _run_task(tmp_path, task, procid=1, localid=0)
  assert printed[0] == "JAX_LOCAL_DEVICE_IDS=unset"
  assert printed[-2:] == ["--config.mesh.fsdp=-1", "--process_id=1"]


def test_slurm_one_process_per_gpu(stubs, tmp_path):
  (argv,) = _commands(_launch(stubs, "gpu_slurm.sbatch", "PROCESS_PER=gpu", WORKDIR="/shared/run",
                              COORDINATOR_PORT="12345", **SLURM))
  assert argv[1:4] == ["--nodes=2", "--ntasks=16", "--ntasks-per-node=8"]
  task = _srun_task(argv)
  assert _option(task, "--coordinator_address") == "gpu01:12345"
  assert _option(task, "--num_processes") == "16"
  printed = _run_task(tmp_path, task, procid=11, localid=3)
  assert printed[0] == "JAX_LOCAL_DEVICE_IDS=3"
  assert printed[-1] == "--process_id=11"


def test_slurm_gpu_count_from_a_typed_gpus_per_node(stubs):
  env = dict(SLURM, SLURM_GPUS_ON_NODE="", SLURM_GPUS_PER_NODE="a100:4")
  (argv,) = _commands(_launch(stubs, "gpu_slurm.sbatch", PROCESS_PER="gpu", WORKDIR="r", **env))
  assert argv[1:4] == ["--nodes=2", "--ntasks=8", "--ntasks-per-node=4"]


@pytest.mark.parametrize("env, variable", [
    (dict(WORKDIR="r", SLURM_JOB_ID=""), "SLURM_JOB_ID"),
    (dict(WORKDIR="r", SLURM_JOB_NODELIST=""), "SLURM_JOB_NODELIST"),
    (dict(WORKDIR="r", SLURM_JOB_NUM_NODES="many"), "SLURM_JOB_NUM_NODES"),
    (dict(WORKDIR="r", SLURM_JOB_NODELIST="nowhere"), "SLURM_JOB_NODELIST"),
    (dict(), "WORKDIR"),
    (dict(WORKDIR="r", CONFIG="configs/missing.py"), "CONFIG"),
    (dict(WORKDIR="r", PROCESS_PER="socket"), "PROCESS_PER"),
    (dict(WORKDIR="r", PROCESS_PER="gpu", SLURM_GPUS_ON_NODE=""), "GPUS_PER_NODE"),
    (dict(WORKDIR="r", PROCESS_PER="gpu", GPUS_PER_NODE="0"), "GPUS_PER_NODE"),
    (dict(WORKDIR="r", COORDINATOR_PORT="70000"), "COORDINATOR_PORT"),
    (dict(WORKDIR="r", COORDINATOR_PORT="port"), "COORDINATOR_PORT"),
    (dict(WORKDIR="r", DRY_RUN="true"), "DRY_RUN"),
])
def test_slurm_refuses_a_missing_or_invalid_variable(stubs, env, variable):
  _assert_refused(_launch(stubs, "gpu_slurm.sbatch", **dict(SLURM, **env)), variable)


# --- launch/tpu_pod.sh ----------------------------------------------------


def _remote(argv: list[str]) -> str:
  """The command an ssh line runs on every host, checked to be valid shell."""
  assert argv[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and argv[4] == "ssh"
  assert "--worker=all" in argv
  command = _option(argv, "--command")
  assert subprocess.run([BASH, "-n", "-c", command], check=False).returncode == 0, command
  return command


def _assert_runs_main(argv: list[str], *overrides: str, remote_dir: str = "lxmert-jax") -> None:
  cd, rest = _remote(argv).split(" && ", 1)
  assert cd == f"cd {remote_dir}"
  assert shlex.split(rest) == ["LXMERT_JAX_DISTRIBUTED=1", "python3", "-m", "lxmert_jax.main",
                               "--config=configs/pretrain.py", "--workdir=gs://bucket/runs/base",
                               *overrides]


def test_tpu_creates_a_missing_slice_copies_the_code_and_runs_on_every_host(stubs):
  head = _head()
  create, archive, scp, install, job = _commands(_launch(
      stubs, "tpu_pod.sh", "--config.mesh.fsdp=-1", "--config.data.dir=gs://bucket/data",
      **TPU_CREATE))
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "lxmert-v4-32",
                    "--zone=us-central2-b", "--accelerator-type=v4-32",
                    "--version=tpu-ubuntu2204-base"]
  tarball = f"lxmert-jax-{head}.tar.gz"
  assert archive == ["git", "-C", REPO, "archive", "--format=tar.gz", "-o", f"/tmp/{tarball}", head]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"/tmp/{tarball}",
                 f"lxmert-v4-32:{tarball}", "--zone=us-central2-b", "--worker=all"]
  steps = [shlex.split(step) for step in _remote(install).split("; ")]
  assert ["tar", "-xzf", tarball, "-C", "lxmert-jax"] in steps
  assert steps[-1] == ["python3", "-m", "pip", "install", "--quiet", "-e", ".", "jax[tpu]"]
  _assert_runs_main(job, "--config.mesh.fsdp=-1", "--config.data.dir=gs://bucket/data")
  # Only the read-only query ran.
  assert _calls(stubs) == ["gcloud compute tpus tpu-vm describe lxmert-v4-32 "
                           "--zone=us-central2-b --format=value(state)"]


def test_tpu_reuses_a_ready_slice_and_clones_a_ref(stubs):
  result = _launch(stubs, "tpu_pod.sh", REPO_URL="https://github.com/me/lxmert-jax.git",
                   REF="release-1", PROJECT="my-project", REMOTE_DIR="code/lxmert",
                   STUB_TPU_STATE="READY", **TPU)
  install, job = _commands(result)
  assert "using it" in result.stderr
  for argv in (install, job):
    assert argv[5:8] == ["lxmert-v4-32", "--zone=us-central2-b", "--project=my-project"]
  steps = [shlex.split(step) for step in _remote(install).split("; ")]
  assert steps[1] == ["[", "-d", "code/lxmert/.git", "]", "||", "git", "clone", "--quiet",
                      "https://github.com/me/lxmert-jax.git", "code/lxmert"]
  assert ["git", "fetch", "--quiet", "origin", "release-1"] in steps
  assert ["git", "checkout", "--quiet", "--detach", "FETCH_HEAD"] in steps
  assert steps[-1][-1] == "jax[tpu]"
  _assert_runs_main(job, remote_dir="code/lxmert")


def test_tpu_pins_a_local_ref_to_its_commit_for_the_clone(stubs):
  head = _head()
  install, _ = _commands(_launch(stubs, "tpu_pod.sh", REPO_URL="git@github.com:me/lxmert-jax.git",
                                 STUB_TPU_STATE="READY", **TPU))
  assert f"git fetch --quiet origin {head};" in _remote(install)


def test_tpu_install_0_only_runs_the_job(stubs):
  (job,) = _commands(_launch(stubs, "tpu_pod.sh", "INSTALL=0", "--config.note=a b", "--x='y'",
                             STUB_TPU_STATE="READY", **TPU))
  _assert_runs_main(job, "--config.note=a b", "--x='y'")


@pytest.mark.parametrize("env", [dict(STUB_TPU_STATE="PREEMPTED"),
                                 dict(STUB_DESCRIBE_ERROR="PERMISSION_DENIED: no access")])
def test_tpu_stops_on_a_slice_it_cannot_use(stubs, env):
  result = _launch(stubs, "tpu_pod.sh", **TPU_CREATE, **env)
  assert result.returncode == 1, result.stderr
  assert result.stdout == ""
  assert ("PREEMPTED" if "STUB_TPU_STATE" in env else "PERMISSION_DENIED") in result.stderr


@pytest.mark.parametrize("env, variable", [
    (dict(TPU=""), "TPU"),
    (dict(TPU="My_TPU"), "TPU"),
    (dict(ZONE=""), "ZONE"),
    (dict(ZONE="central"), "ZONE"),
    (dict(WORKDIR=""), "WORKDIR"),
    (dict(WORKDIR="runs/base"), "WORKDIR"),
    (dict(WORKDIR="/mnt/disk/runs/base"), "WORKDIR"),
    (dict(WORKDIR="gs://"), "WORKDIR"),
    (dict(ACCELERATOR_TYPE=""), "ACCELERATOR_TYPE"),
    (dict(ACCELERATOR_TYPE="tpu-32"), "ACCELERATOR_TYPE"),
    (dict(RUNTIME_VERSION=""), "RUNTIME_VERSION"),
    (dict(CONFIG="configs/missing.py"), "CONFIG"),
    (dict(REF="no-such-ref-here"), "REF"),
    (dict(REMOTE_DIR="../elsewhere"), "REMOTE_DIR"),
    (dict(REMOTE_DIR=".ssh"), "REMOTE_DIR"),
    (dict(REPO_URL="https://x/y.git; rm -rf ~"), "REPO_URL"),
    (dict(INSTALL="yes"), "INSTALL"),
    (dict(DRY_RUN="on"), "DRY_RUN"),
])
def test_tpu_refuses_a_missing_or_invalid_variable(stubs, env, variable):
  _assert_refused(_launch(stubs, "tpu_pod.sh", **dict(TPU_CREATE, **env)), variable)


def test_tpu_refuses_an_unknown_variable(stubs):
  _assert_refused(_launch(stubs, "tpu_pod.sh", "ACCELERATOR=v4-32", **TPU), "ACCELERATOR")


# --- lxmert_jax/main.py: --coordinator_address, --num_processes, --process_id


def test_distributed_kwargs_explicit_flags_turn_auto_detection_off():
  for env in (None, "1"):
    assert main_lib.distributed_kwargs("10.0.0.1:61234", 4, 3, env) == dict(
        coordinator_address="10.0.0.1:61234", num_processes=4, process_id=3,
        cluster_detection_method="deactivate")
  assert main_lib.distributed_kwargs("[fe80::1]:1234", 1, 0, None)["num_processes"] == 1


@pytest.mark.parametrize("env, expected", [(None, None), ("0", None), ("", None), ("1", {}),
                                           ("true", {})])
def test_distributed_kwargs_without_flags_follows_the_environment(env, expected):
  assert main_lib.distributed_kwargs(None, None, None, env) == expected


@pytest.mark.parametrize("args, message", [
    (("h:1", None, None), "--coordinator_address given without --num_processes and --process_id"),
    ((None, 2, None), "--num_processes given without --coordinator_address and --process_id"),
    ((None, 2, 0), "--num_processes and --process_id given without --coordinator_address"),
    (("h:1", 2, None), "given without --process_id"),
    (("h", 2, 0), "--coordinator_address must be HOST:PORT"),
    ((":1234", 2, 0), "--coordinator_address must be HOST:PORT"),
    (("h:0", 2, 0), "--coordinator_address must be HOST:PORT"),
    (("h:port", 2, 0), "--coordinator_address must be HOST:PORT"),
    (("", 2, 0), "--coordinator_address must be HOST:PORT"),
    (("h:1", 0, 0), "--num_processes must be at least 1"),
    (("h:1", 2, 2), "--process_id must be in [0, 2)"),
    (("h:1", 2, -1), "--process_id must be in [0, 2)"),
])
def test_distributed_kwargs_refuses_incomplete_or_invalid_flags(args, message):
  with pytest.raises(ValueError) as error:
    main_lib.distributed_kwargs(*args, "1")
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_main_refuses_partial_flags_with_status_2(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "lxmert_jax.main", "--config=configs/pretrain.py:tiny",
       f"--workdir={workdir}", "--num_processes=2", "--process_id=0"],
      cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --num_processes and --process_id given without --coordinator_address: "
      "a multi-process run needs all three flags (or none, for auto-detection)")
  assert not workdir.exists()
