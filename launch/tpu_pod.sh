#!/usr/bin/env bash
# Pre-train on a Cloud TPU VM slice: create it unless it exists, install the
# code on every host, run the same command on every host.
#
#   launch/tpu_pod.sh TPU=lxmert-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#       RUNTIME_VERSION=tpu-ubuntu2204-base WORKDIR=gs://bucket/runs/base \
#       --config.data.dir=gs://bucket/lxmert --config.mesh.fsdp=-1 --config.mesh.data=1
#
# Variables, from the environment or given as KEY=VALUE arguments (those win);
# every other argument goes to `python -m lxmert_jax.main` (config overrides):
#   TPU               required; the TPU VM's name.
#   ZONE              required; its zone, e.g. us-central2-b.
#   PROJECT           the Cloud project, default gcloud's configured one.
#   ACCELERATOR_TYPE  e.g. v4-32, v5p-64, v6e-16; required to create the slice.
#   RUNTIME_VERSION   the TPU software version, e.g. tpu-ubuntu2204-base (v4),
#                     v2-alpha-tpuv5 (v5p); required to create the slice.
#   WORKDIR           required; gs://bucket/path. Every host writes its shards
#                     of each checkpoint there, so a path local to each host
#                     is refused.
#   CONFIG            config file[:preset] in the repository, default
#                     configs/pretrain.py.
#   REPO_URL          a git URL the hosts clone; unset: this checkout's REF is
#                     copied to them (git archive + scp).
#   REF               the commit, branch or tag to install, default HEAD (a
#                     ref this checkout knows is pinned to its commit).
#   REMOTE_DIR        where the code goes on each host, relative to the home
#                     directory, default lxmert-jax.
#   PYTHON            the hosts' interpreter, default python3.
#   INSTALL           1 (default) installs REF before running; 0 runs the code
#                     already in REMOTE_DIR.
#   DRY_RUN           1 prints the commands instead of running them; the
#                     read-only `gcloud ... describe` still runs.
set -euo pipefail

readonly NAME=tpu_pod.sh
readonly KNOWN=(TPU ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR CONFIG REPO_URL REF
  REMOTE_DIR PYTHON INSTALL DRY_RUN)

die() {
  echo "$NAME: $*" >&2
  exit 2
}

# The words of a command as a shell reads them back: plain words as they
# are, the others in single quotes, so a printed command can be pasted (and
# the remote commands below survive the hosts' shell).
quote() {
  local word sq="'" safe='^[A-Za-z0-9_./:=,@%+-]+$' out=()
  for word in "$@"; do
    if [[ "$word" =~ $safe ]]; then out+=("$word"); else out+=("$sq${word//$sq/$sq\\$sq$sq}$sq"); fi
  done
  printf '%s' "${out[*]}"
}

# Runs a command, or with DRY_RUN=1 prints it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ $(quote "$@")"
  else
    "$@"
  fi
}

# The last command runs in place of this shell, so that Ctrl-C or SIGTERM
# reach gcloud (and through it the hosts' trainers).
launch() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ $(quote "$@")"
    exit 0
  fi
  exec "$@"
}

for name in "${KNOWN[@]}"; do
  printf -v "$name" '%s' "${!name:-}"
done
ARGS=()
for arg in "$@"; do
  if [[ "$arg" =~ ^([A-Z][A-Z0-9_]*)=(.*)$ ]]; then
    name="${BASH_REMATCH[1]}"
    [[ " ${KNOWN[*]} " == *" $name "* ]] || die "unknown variable $name (known: ${KNOWN[*]})"
    printf -v "$name" '%s' "${BASH_REMATCH[2]}"
  else
    ARGS+=("$arg")
  fi
done
CONFIG="${CONFIG:-configs/pretrain.py}"
REF="${REF:-HEAD}"
REMOTE_DIR="${REMOTE_DIR:-lxmert-jax}"
PYTHON="${PYTHON:-python3}"
INSTALL="${INSTALL:-1}"
DRY_RUN="${DRY_RUN:-0}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Every check comes before anything changes, so a mistake costs no TPU time.
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN must be 0 or 1, got '$DRY_RUN'"
[[ "$INSTALL" == 0 || "$INSTALL" == 1 ]] || die "INSTALL must be 0 or 1, got '$INSTALL'"
[[ -n "$TPU" ]] || die "TPU is not set (the TPU VM's name, e.g. TPU=lxmert-v4-32)"
[[ "$TPU" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  die "TPU must be lower-case letters, digits and hyphens, starting with a letter, got '$TPU'"
[[ -n "$ZONE" ]] || die "ZONE is not set (the TPU's zone, e.g. ZONE=us-central2-b)"
[[ "$ZONE" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "ZONE must look like us-central2-b, got '$ZONE'"
[[ -z "$PROJECT" || "$PROJECT" =~ ^[a-z0-9.:-]+$ ]] || die "PROJECT is not a project id: '$PROJECT'"
[[ -z "$ACCELERATOR_TYPE" || "$ACCELERATOR_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  die "ACCELERATOR_TYPE must look like v4-32 or v5p-64, got '$ACCELERATOR_TYPE'"
[[ -z "$RUNTIME_VERSION" || "$RUNTIME_VERSION" =~ ^[A-Za-z0-9._-]+$ ]] ||
  die "RUNTIME_VERSION is not a version name: '$RUNTIME_VERSION'"
[[ -n "$WORKDIR" ]] || die "WORKDIR is not set (a bucket path, e.g. WORKDIR=gs://bucket/runs/base)"
[[ "$WORKDIR" =~ ^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9](/.*)?$ ]] ||
  die "WORKDIR must be gs://bucket/path, got '$WORKDIR': a local directory is per host, and" \
    "every host of the slice writes its part of each checkpoint"
[[ "$REMOTE_DIR" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$ ]] ||
  die "REMOTE_DIR must be a path under the home directory without . or .. parts, got '$REMOTE_DIR'"
[[ "$PYTHON" =~ ^[A-Za-z0-9._/~-]+$ ]] || die "PYTHON is not a command name: '$PYTHON'"
[[ -z "$REPO_URL" || "$REPO_URL" =~ ^[A-Za-z0-9@:/._~+-]+$ ]] || die "REPO_URL is not a git URL: '$REPO_URL'"
commit=""
if [[ "$INSTALL" == 1 ]]; then
  if ! commit="$(git -C "$repo_root" rev-parse --verify --quiet "$REF^{commit}" 2>/dev/null)"; then
    commit=""
    # A ref only the remote has (a branch pushed from elsewhere) is the
    # clone's to resolve; copying needs a commit here.
    [[ -n "$REPO_URL" ]] || die "REF=$REF is not a commit of $repo_root (needed to copy it)"
    [[ "$REF" =~ ^[A-Za-z0-9._/-]+$ ]] || die "REF is not a git ref: '$REF'"
  fi
  if [[ -n "$commit" && "$CONFIG" != /* ]]; then
    git -C "$repo_root" cat-file -e "$commit:${CONFIG%%:*}" 2>/dev/null ||
      die "CONFIG=$CONFIG: no file ${CONFIG%%:*} at REF=$REF ($commit)"
  fi
fi
command -v gcloud >/dev/null || die "gcloud is not on PATH (the Google Cloud CLI)"

target=("$TPU" "--zone=$ZONE")
[[ -z "$PROJECT" ]] || target+=("--project=$PROJECT")

# Reuse the slice if it exists: creating takes minutes and a second create
# fails. gcloud says NOT_FOUND for a missing one; any other failure (no
# credentials, no such project) stops here rather than trying to create.
if out="$(gcloud compute tpus tpu-vm describe "${target[@]}" --format='value(state)' 2>&1)"; then
  state="${out##*$'\n'}"
  if [[ "$state" != READY ]]; then
    echo "$NAME: TPU $TPU exists but is ${state:-in no state}, not READY: wait, or delete it" \
      "(gcloud compute tpus tpu-vm delete $(quote "${target[@]}")) to create it anew" >&2
    exit 1
  fi
  echo "$NAME: TPU $TPU exists and is READY; using it" >&2
elif [[ "$out" == *NOT_FOUND* || "$out" == *"not found"* ]]; then
  [[ -n "$ACCELERATOR_TYPE" ]] || die "ACCELERATOR_TYPE is not set: TPU $TPU does not exist, creating it needs one"
  [[ -n "$RUNTIME_VERSION" ]] || die "RUNTIME_VERSION is not set: TPU $TPU does not exist, creating it needs one"
  run gcloud compute tpus tpu-vm create "${target[@]}" "--accelerator-type=$ACCELERATOR_TYPE" \
    "--version=$RUNTIME_VERSION"
else
  echo "$NAME: gcloud compute tpus tpu-vm describe $TPU failed:" >&2
  echo "$out" >&2
  exit 1
fi

# PYTHON is checked to need no quoting; double quotes keep the printed
# command readable.
pip_install="$PYTHON -m pip install --quiet -e . \"jax[tpu]\""
dir="$(quote "$REMOTE_DIR")"
if [[ "$INSTALL" == 1 && -n "$REPO_URL" ]]; then
  ref="${commit:-$REF}"
  url="$(quote "$REPO_URL")"
  run gcloud compute tpus tpu-vm ssh "${target[@]}" --worker=all "--command=set -e; \
[ -d $dir/.git ] || git clone --quiet $url $dir; cd $dir; git remote set-url origin $url; \
git fetch --quiet origin $(quote "$ref"); git checkout --quiet --detach FETCH_HEAD; $pip_install"
elif [[ "$INSTALL" == 1 ]]; then
  if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no)" && "$REF" == HEAD ]]; then
    echo "$NAME: uncommitted changes are not copied, only commit $commit" >&2
  fi
  tarball="lxmert-jax-$commit.tar.gz"
  run git -C "$repo_root" archive --format=tar.gz -o "${TMPDIR:-/tmp}/$tarball" "$commit"
  run gcloud compute tpus tpu-vm scp "${TMPDIR:-/tmp}/$tarball" "$TPU:$tarball" "${target[@]:1}" \
    --worker=all
  run gcloud compute tpus tpu-vm ssh "${target[@]}" --worker=all "--command=set -e; \
rm -rf $dir; mkdir -p $dir; tar -xzf $tarball -C $dir; rm $tarball; cd $dir; $pip_install"
fi

# LXMERT_JAX_DISTRIBUTED=1: on Cloud TPU, jax.distributed.initialize() finds
# the coordinator, the process count and this host's id by itself.
main_cmd="$(quote "$PYTHON" -m lxmert_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" "${ARGS[@]}")"
launch gcloud compute tpus tpu-vm ssh "${target[@]}" --worker=all \
  "--command=cd $dir && LXMERT_JAX_DISTRIBUTED=1 $main_cmd"
