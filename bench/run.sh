#!/usr/bin/env bash
# edgemesh benchmark: direct, one nginx proxy hop, and the mesh's four request paths, on
# loopback, with wrk.  From the repository root (as root on a fresh Debian machine):
#     bash bench/run.sh                      # about 10 min with the defaults; prints a table
#     DURATION=5s REPS=1 WARMUP=1s bash bench/run.sh     # a quick look
#     PYSPY=1 TARGETS=p2-edge-edge PATHS=/small bash bench/run.sh   # where the time goes
# Knobs (env): DURATION=10s REPS=3 CONNS=32 THREADS=1 WARMUP=3s WRK_TIMEOUT=10s
#   TARGETS="direct nginx twisted-portforward twisted-portforward-stock relay-nginx relay-nginx-tls
#     relay-copy relay-splice p1-local p2-edge-edge p3-edge-cloud p4-cloud-edge p2-edge-edge-tls
#     p3-edge-cloud-tls p4-cloud-edge-tls" (twisted-portforward*: Twisted's own TCP relay, on the
#     mesh's reactor and stock; relay-*: two-process anchors; relay-nginx-tls: mTLS between the
#     hops)  PATHS="/small /big"  TRANSFERS=7 (4 MiB, curl)
#   LOADGEN_CPU=0 MESH_CPU=1 BASE_PORT=18180 MESH_ARGS= READY_TIMEOUT=30 NGINX_BUFFERING=off
#   MESH_ENV= ("VAR=VALUE ...": extra environment of every mesh process)
#   IDLE_WAIT=20 IDLE_BUSY=15 (wait for a quiet machine before each run)
#   PYTHON=/work/venv/bin/python (the mesh's interpreter)  PYSPY=1 PYSPY_SECONDS=8 PYSPY_RATE=400
#   PYTHONS="3.11 3.12 3.13" (every mesh target once with each, in one run; a bare version is
#     built or found by bench/pythons.sh, with its venv; a path or command without the
#     dependencies gets a venv /tmp/edgemesh-bench-venv-<full version>; with SKIP_INSTALL=1 the
#     run stops at the start instead)
#   SKIP_INSTALL=1 (no apt-get / pip)  RESULTS_DIR=bench/results
#   RATE=1000 RATE_CONNS=<CONNS> RATE_PATHS=/small RATE_SPREAD=<RATE_CONNS> (latency at a fixed
#     request rate with hey, after the wrk runs: RATE requests/s in all; RATE=0: none)
#   RATE_RT=1 (as root: the fixed-rate runs at SCHED_FIFO)  RATE_TRIM=1
#   NICE=-10 (nice of every process the bench starts)  GC_PROBE=1 (time the mesh's collections)
#   MEM_PROBE=DIR (what each mesh process holds at its RSS peaks; bench/memprobe)
# BENCH=streams runs bench/streams.py instead (byte streams and gRPC edge → edge against
# direct; needs grpcio in PYTHON, which this installs): STREAMS_ARGS="--size-mib 256 --reps 3"
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
DEFAULT_PYTHON=/work/venv/bin/python
export PYTHON="${PYTHON:-$DEFAULT_PYTHON}"

# Whether interpreter $1 has what the mesh needs (the mesh itself runs from this checkout).
has_dependencies() {
  PYTHONPATH="$REPO" "$1" -c 'import edgemesh.roles, twisted, httptools, msgpack, yaml' 2>/dev/null
}

apt_install() {
  [[ $(id -u) == 0 ]] || { echo "run.sh: need root to apt-get install $*" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  need=()
  command -v wrk >/dev/null || need+=(wrk)
  # hey: the fixed-rate runs (RATE); wrk has no rate of its own, wrk2 and fortio are not packaged.
  [[ "${RATE:-1000}" == 0 ]] || command -v hey >/dev/null || need+=(hey)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v curl >/dev/null || need+=(curl)
  command -v python3 >/dev/null || need+=(python3)
  # (Debian's nginx package may start a system nginx on port 80; this script leaves it alone.)
  if ((${#need[@]})); then apt_install "${need[@]}"; fi

  # The mesh's interpreter: the project venv by default; elsewhere a venv made here, from the
  # distribution's python3 when there is one: Debian's (like the official Docker images') is
  # built with PGO and LTO, and runs the mesh's Python ~20 % faster than a plain -O3 build
  # such as pyenv's default (README, "Python versions"), which may come first on PATH.
  if [[ ! -x "$PYTHON" && "$PYTHON" == "$DEFAULT_PYTHON" ]]; then
    PYTHON=/tmp/edgemesh-bench-venv/bin/python
    if [[ ! -x "$PYTHON" ]]; then
      base=python3
      [[ -x /usr/bin/python3 ]] && base=/usr/bin/python3
      "$base" -m venv /tmp/edgemesh-bench-venv 2>/dev/null || {
        rm -rf /tmp/edgemesh-bench-venv; apt_install python3-venv
        "$base" -m venv /tmp/edgemesh-bench-venv; }
    fi
  fi
  if ! has_dependencies "$PYTHON"; then
    # Dependencies only matter: the mesh itself runs from this checkout (PYTHONPATH).
    "$PYTHON" -m pip install -q "$REPO"
  fi
  if [[ "${BENCH:-}" == streams ]] && ! "$PYTHON" -c 'import grpc' 2>/dev/null; then
    "$PYTHON" -m pip install -q grpcio
  fi
  if [[ "${PYSPY:-0}" == 1 && ! -x "$(dirname "$PYTHON")/py-spy" ]]; then
    "$PYTHON" -m pip install -q py-spy
  fi
  # Several interpreters: each one with the dependencies, in a venv of its own if need be.
  if [[ -n "${PYTHONS:-}" ]]; then
    ready=()
    for py in $PYTHONS; do
      if [[ "$py" =~ ^3\.[0-9]+$ ]]; then  # a version: bench/pythons.sh builds or finds it
        ready+=("$(bash "$HERE/pythons.sh" "$py")")
        continue
      fi
      exe="$(command -v "$py" || true)"
      [[ -n "$exe" ]] || { echo "run.sh: PYTHONS: $py not found" >&2; exit 1; }
      if ! has_dependencies "$exe"; then
        # Named by the full version: several interpreters may share a basename ("python").
        full="$("$exe" -c 'import platform; print(platform.python_version())')"
        venv="/tmp/edgemesh-bench-venv-$full"
        [[ -x "$venv/bin/python" ]] || "$exe" -m venv "$venv"
        "$venv/bin/python" -m pip install -q "$REPO"
        exe="$venv/bin/python"
      fi
      ready+=("$exe")
    done
    export PYTHONS="${ready[*]}"
  fi
elif [[ -n "${PYTHONS:-}" ]]; then
  # No installs: versions name what bench/pythons.sh made before.
  ready=()
  for py in $PYTHONS; do
    if [[ "$py" =~ ^3\.[0-9]+$ ]]; then ready+=("$(bash "$HERE/pythons.sh" --print "$py")")
    else ready+=("$py"); fi
  done
  export PYTHONS="${ready[*]}"
  # Said now, not as failed rows at the end: an interpreter without the dependencies
  # (Twisted's name then finds this checkout's twisted/plugins folder).
  for py in $PYTHONS; do
    has_dependencies "$py" || { echo "run.sh: PYTHONS: $py lacks edgemesh's dependencies," \
      "and SKIP_INSTALL=1 installs nothing (give a venv, or leave SKIP_INSTALL unset)" >&2
      exit 1; }
  done
fi

if [[ "${BENCH:-}" == streams ]]; then
  # shellcheck disable=SC2086  # STREAMS_ARGS is a list of options
  exec "$PYTHON" "$HERE/streams.py" ${STREAMS_ARGS:-}
fi
for b in wrk nginx taskset curl $([[ "${RATE:-1000}" == 0 ]] || echo hey); do
  command -v "$b" >/dev/null || { echo "run.sh: $b is missing (unset SKIP_INSTALL)" >&2; exit 1; }
done
[[ -x "$PYTHON" ]] || { echo "run.sh: PYTHON=$PYTHON is not executable" >&2; exit 1; }
exec "$(command -v python3 || echo "$PYTHON")" "$HERE/harness.py"
