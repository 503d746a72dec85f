"""Instructions that a 1 MiB body costs the edges, over mTLS links or plaintext (issue 15).

    PYTHONPATH=. /work/main/.venv/bin/python bench/tls_cost.py [--tree DIR] [--plain]
        [--link-tls-io memory|socket] [--transfers 20] [--annotate 25] [--parallel 32]
        [--path p1]

CPU seconds are noise on a shared machine; instruction counts are not.  This starts the
bench mesh (harness.py's router and two edges, the origin nginx) with both edges under
``valgrind --tool=callgrind --instr-atstart=no``, so that start-up runs uninstrumented;
once every path answers it switches instrumentation on in both edges, sends
``--transfers`` GETs of the 1 MiB body along path 2 (edge-1 → hub link → edge-2 →
origin) with curl, dumps, and prints the instructions of each edge per MiB.
``--tree`` runs the mesh from another checkout (e.g. an old commit extracted with
``git archive``); ``--annotate N`` adds callgrind_annotate's N most costly functions;
``--link-tls-io`` passes that option to every node (how a link's TLS reaches its socket).
``--parallel N`` makes each transfer N curls at once (32: the concurrency of bench/run.sh's
/big rows, where reads are cut by the pod connections' read budget and the links' credit);
``--path p1`` measures path 1 (edge-1 → origin) instead.
``--measure strace`` runs the edges without valgrind and counts every system call they
make during the transfers (``strace -c -f``, attached once the mesh is ready);
``--measure cpu`` runs them bare and prints their CPU time per MiB from /proc (noisy on a
shared machine: compare settings in the same minute only); ``--measure perf`` does the same
under ``perf record -e cpu-clock`` of each edge and splits each edge's samples into the
cipher (AES/GCM/GHASH symbols of libcrypto), other libcrypto/libssl work, copies (memcpy,
memmove, memset wherever they run), the interpreter and cffi, the kernel (system calls,
TCP) and the rest, in ms per MiB (the samples' shares of the edge's CPU time);
``--measure faults`` shows where the edges' page faults come from (perf, call graphs);
``--measure pyspy`` samples each edge's Python stacks with py-spy (on PATH) during the
transfers and prints pyspy_summary.py's tables (where the interpreter's share goes);
``--measure profile`` runs each edge under cProfile, on only during the transfers (SIGUSR1 /
SIGUSR2 to a shim), and prints the functions called most per MiB: call counts are exact
where CPU times are noise (``--annotate N``: the N first; the shim's times mean nothing).

Needs valgrind, nginx and curl; the ports are BASE_PORT (default here 18480) and the
next eight.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("BASE_PORT", "18480")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

WRAPPER = """#!/bin/sh
# The edges under callgrind, instrumentation off until asked; anything else as it is.
case "$*" in
  *--help*) exec "{python}" "$@" ;;
  *edgemesh-edge*) exec valgrind --tool=callgrind --instr-atstart=no --dump-instr=no \\
      --callgrind-out-file={out}/callgrind.%p "{python}" "$@" ;;
  *) exec "{python}" "$@" ;;
esac
"""


PROFILER = """# The edges' interpreter with cProfile switched on by SIGUSR1 and dumped by SIGUSR2.
import cProfile, runpy, signal, sys
_profile = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: _profile.enable())
def _dump(*_):
    _profile.disable()
    path = "{out}/profile.%d" % __import__("os").getpid()
    _profile.dump_stats(path + ".part")
    __import__("os").replace(path + ".part", path)  # whole once it exists
signal.signal(signal.SIGUSR2, _dump)
sys.argv = sys.argv[2:]  # "-m edgemesh ..." -> the module's own argv
runpy.run_module("edgemesh", run_name="__main__", alter_sys=True)
"""

PROFILE_WRAPPER = """#!/bin/sh
case "$*" in
  *--help*) exec "{python}" "$@" ;;
  *edgemesh-edge*) exec "{python}" {out}/profiler.py "$@" ;;
  *) exec "{python}" "$@" ;;
esac
"""


def totals(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"{path}: no totals line")


def io_calls(pid: int) -> tuple[int, int]:
    """The read and write system calls ``pid`` made so far (syscr, syscw of /proc/PID/io)."""
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` so far (minflt of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def strace_rows(path: str) -> list[tuple[str, int]]:
    """(system call, calls) from an ``strace -c`` summary, most frequent first."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                rows.append((parts[-1], int(parts[3])))
    return sorted(rows, key=lambda row: -row[1])


_CALL = re.compile(r"\s(\w+)\(fd: (\d+),.*\)\s+=\s+(-?\d+)")
_BINS = (0, 64, 1024, 4096, 16384, 65536, 131072, 262144, 524288, 1 << 30)


def size_report(path: str, name: str, mib: float, unit: str) -> str:
    """Reads and writes per fd from an ``strace -f`` trace: the fds that moved the most
    bytes (a link's, a pod's), their calls per ``unit`` and a histogram of the sizes."""
    per: dict[tuple[int, str], list[int]] = {}
    with open(path) as f:
        for line in f:
            match = _CALL.search(line)
            if match is None or int(match.group(3)) < 0:
                continue
            call, fd, size = match.group(1), int(match.group(2)), int(match.group(3))
            kind = "read" if call.startswith(("recv", "read")) else "write"
            per.setdefault((fd, kind), []).append(size)
    moved: dict[int, int] = {}
    for (fd, _kind), sizes in per.items():
        moved[fd] = moved.get(fd, 0) + sum(sizes)
    top = sorted(moved, key=lambda fd: -moved[fd])[:2]
    lines = [(f"{name}: reads and writes of the two fds that moved the most bytes, then of "
              f"the others (per {unit}):")]
    rest: dict[str, list[int]] = {}
    for (fd, kind), sizes in sorted(per.items()):
        if fd not in top:
            rest.setdefault(kind, []).extend(sizes)
            continue
        lines.append(_histogram(f"fd {fd} {kind}", sizes, mib))
    for kind, sizes in sorted(rest.items()):
        lines.append(_histogram(f"other fds {kind}", sizes, mib))
    return "\n".join(lines)


def _histogram(label: str, sizes: list[int], mib: float) -> str:
    counts = [0] * (len(_BINS) - 1)
    for size in sizes:
        for index in range(len(_BINS) - 1):
            if size < _BINS[index + 1]:
                counts[index] += 1
                break
    bins = " ".join(f"<{_BINS[i + 1] // 1024 if _BINS[i + 1] >= 1024 else _BINS[i + 1]}"
                    f"{'K' if _BINS[i + 1] >= 1024 else ''}:{c / mib:.1f}"
                    for i, c in enumerate(counts) if c)
    return (f"    {label}: {len(sizes) / mib:.1f} calls, {sum(sizes) / mib / 1024:.0f} KiB, "
            f"mean {sum(sizes) / max(len(sizes), 1) / 1024:.1f} KiB; {bins}")


PARTS = (
    # (part, dso pattern, symbol pattern), first match wins.
    ("copies", r"", r"(__mem(cpy|move|set)|memcpy|memmove|memset|copy_user|rep_movs)"),
    ("cipher", r"(libcrypto|_rust)", r"(aes|gcm|ghash|clmul|chacha|poly1305|gf128)"),
    ("openssl", r"(lib(ssl|crypto)|_rust)", r""),
    ("python", r"(python|libpython|_cffi_backend|\.cpython-)", r""),
    ("kernel", r"kernel", r""),
    ("libc", r"libc", r""),
)


def perf_shares(path: str, show: int = 0) -> dict[str, float]:
    """Each part's share of a ``perf record`` file's samples (PARTS; "other" last)."""
    report = subprocess.run(["perf", "report", "-i", path, "--stdio", "--sort", "dso,sym",
                             "--percent-limit", "0"], capture_output=True, text=True,
                            check=False).stdout
    return harness.perf_report_shares(report, PARTS, show)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=harness.REPO, help="checkout the mesh runs from")
    parser.add_argument("--plain", action="store_true", help="plaintext links (--insecure)")
    parser.add_argument("--link-tls-io", choices=["memory", "socket"], default=None,
                        help="passed to every node (default: the nodes' own default)")
    parser.add_argument("--transfers", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=1,
                        help="curls at once per transfer (32: the bench's 32 connections)")
    parser.add_argument("--path", choices=["p1", "p2"], default="p2",
                        help="p1: edge-1 to the origin (plaintext only), p2: edge to edge")
    parser.add_argument("--body", choices=["big", "huge", "small"], default="big",
                        help="the 1 MiB body, the 4 MiB one (less of the exchange's own cost "
                             "per MiB), or the 13-byte one (per exchange, not per MiB)")
    parser.add_argument("--annotate", type=int, default=0)
    parser.add_argument("--measure", default="callgrind",
                        choices=["callgrind", "strace", "cpu", "perf", "pyspy", "faults",
                                 "profile", "sizes"])
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    harness.REPO = os.path.abspath(args.tree)
    out = tempfile.mkdtemp(prefix="edgemesh-tls-cost-")
    wrapper = os.path.join(out, "python")
    with open(wrapper, "w") as f:
        if args.measure == "callgrind":
            f.write(WRAPPER.format(out=out, python=args.python))
        elif args.measure == "profile":
            f.write(PROFILE_WRAPPER.format(out=out, python=args.python))
            with open(os.path.join(out, "profiler.py"), "w") as shim:
                shim.write(PROFILER.format(out=out))
        else:
            f.write(f'#!/bin/sh\nexec "{args.python}" "$@"\n')
    os.chmod(wrapper, 0o755)
    harness.CFG.update(PYTHON=wrapper, READY_TIMEOUT="300", IDLE_WAIT="0")
    plain_wait = harness.wait_port
    harness.wait_port = lambda port, proc, timeout=300.0: plain_wait(port, proc, timeout)
    harness.OUTDIR = out
    if args.link_tls_io is not None and not args.plain:
        security = harness.mesh_security
        harness.mesh_security = lambda tmp, tls: [  # type: ignore[assignment]
            *security(tmp, tls), *(["--link-tls-io", args.link_tls_io] if tls else [])]
    tmp = os.path.join(out, "run")
    os.makedirs(os.path.join(tmp, "www"))
    os.chmod(out, 0o755)
    os.chmod(tmp, 0o755)
    body = os.urandom(harness.BIG_SIZE)
    with open(os.path.join(tmp, "www", "big"), "wb") as f:
        f.write(body)
    with open(os.path.join(tmp, "www", "small"), "wb") as f:
        f.write(harness.SMALL_BODY)
    with open(os.path.join(tmp, "www", "huge"), "wb") as f:
        f.write(os.urandom(harness.HUGE_SIZE))
    ports = harness.PORTS
    harness.render("catalog.yaml.in", os.path.join(tmp, "catalog.yaml"),
                   ORIGIN_PORT=ports["origin"], EDGE1_HUB_PORT=ports["edge-1-hub"],
                   EDGE2_HUB_PORT=ports["edge-2-hub"])
    target = harness.TARGETS["p2-edge-edge" if args.plain else "p2-edge-edge-tls"]
    if args.path == "p1":
        target = harness.TARGETS["p1-local"]
    bodies = {"/small": harness.SMALL_BODY, "/big": body}
    try:
        harness.start_origin(tmp)
        started = time.monotonic()
        mesh = harness.start_mesh(tmp, 0, target.tls)
        harness.check_until_ready(target, bodies, ["/small", "/big"])
        print(f"mesh ready in {time.monotonic() - started:.0f}s ({args.tree})", flush=True)
        edges = {name: mesh[name].pid for name in ("edge-1", "edge-2")}
        io_before = {name: io_calls(pid) for name, pid in edges.items()}
        ticks_before = {name: cpu_ticks(pid) for name, pid in edges.items()}
        tracers: dict[str, subprocess.Popen[bytes]] = {}
        if args.measure == "sizes":
            for name, pid in edges.items():
                tracers[name] = subprocess.Popen(
                    # (perf trace, not strace: ptrace's stops slow the edge enough to
                    # make its reads fuller than they are)
                    ["perf", "trace", "-e", "recvfrom,recvmsg,read,sendto,sendmsg,write,writev",
                     "-p", str(pid), "-o", os.path.join(out, f"sizes.{name}")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        if args.measure == "strace":
            for name, pid in edges.items():
                tracers[name] = subprocess.Popen(
                    ["strace", "-c", "-f", "-p", str(pid), "-o",
                     os.path.join(out, f"strace.{name}")], stderr=subprocess.PIPE)
            time.sleep(1)  # strace attaches asynchronously; its summary says nothing else
        if args.measure == "callgrind":
            for pid in edges.values():
                subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True,
                               capture_output=True, timeout=120)
        if args.measure in ("perf", "faults"):
            event = ["-e", "cpu-clock", "-F", "4999"] if args.measure == "perf" else [
                "-e", "page-faults", "-g"]
            for name, pid in edges.items():
                tracers[name] = subprocess.Popen(
                    ["perf", "record", "-q", *event, "-o",
                     os.path.join(out, f"perf.{name}"), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # perf attaches asynchronously
        if args.measure == "pyspy":
            for name, pid in edges.items():
                tracers[name] = subprocess.Popen(
                    ["py-spy", "record", "--nonblocking", "-r", "997", "-f", "raw", "-o",
                     os.path.join(out, f"pyspy-{name}.txt"), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # py-spy attaches asynchronously
        if args.measure == "profile":
            for pid in edges.values():
                os.kill(pid, signal.SIGUSR1)
        ticks_before = {name: cpu_ticks(pid) for name, pid in edges.items()}
        faults_before = {name: minor_faults(pid) for name, pid in edges.items()}
        url = f"http://127.0.0.1:{ports[target.port]}/{args.body}"
        for _ in range(args.transfers):
            curls = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                       "-H", f"Host: {target.host}", url],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(args.parallel)]
            for curl in curls:
                code, err = curl.communicate(timeout=300)
                if code != "200":
                    raise RuntimeError(f"transfer: {code} {err}")
        io_after = {name: io_calls(pid) for name, pid in edges.items()}
        ticks_after = {name: cpu_ticks(pid) for name, pid in edges.items()}
        faults_after = {name: minor_faults(pid) for name, pid in edges.items()}
        # Per MiB for the 1 MiB body; per exchange for the small one.
        size = {"big": harness.BIG_SIZE, "huge": harness.HUGE_SIZE}.get(args.body)
        mib = args.transfers * args.parallel * (size / 2 ** 20 if size else 1)
        unit = "MiB" if size else "exchange"
        links = (f"{'plaintext' if args.plain else 'mTLS'} links, "
                 f"--link-tls-io {args.link_tls_io or 'default'}")
        if args.measure == "profile":
            import pstats
            for name, pid in edges.items():
                os.kill(pid, signal.SIGUSR2)
                path = os.path.join(out, f"profile.{pid}")
                harness.wait_file(path, 30)
                stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
                rows = sorted(((calls, f"{os.path.basename(file)}:{line}:{func}")
                               for (file, line, func), (_, calls, *_rest) in stats.items()),
                              reverse=True)
                total = sum(calls for calls, _ in rows)
                print(f"{name}: {total / mib:,.0f} Python-visible calls per {unit}; most:")
                for calls, where in rows[:args.annotate or 25]:
                    print(f"    {calls / mib:8.1f}  {where}")
            print(f"({args.transfers} x /{args.body}, {links})")
            return
        if args.measure != "callgrind":
            for name, tracer in tracers.items():
                # strace detaches and writes its summary; perf writes its file
                tracer.send_signal(signal.SIGINT)
                tracer.wait(timeout=60)
            hz = os.sysconf("SC_CLK_TCK")
            for name in edges:
                # (/proc/PID/io's syscr/syscw count read(2)/write(2), not Twisted's
                # recv/send: strace counts those.)
                seconds = (ticks_after[name] - ticks_before[name]) / hz
                faults = (faults_after[name] - faults_before[name]) / mib
                print(f"{name}: CPU {seconds * 1e3 / mib:,.2f} ms, {faults:,.1f} minor faults "
                      f"per {unit}"
                      f"{f' (under {args.measure})' if tracers else ''}", flush=True)
                if args.measure == "strace":
                    rows = strace_rows(os.path.join(out, f"strace.{name}"))
                    total = sum(calls for _, calls in rows)
                    print(f"{name}: {total / mib:,.1f} system calls per {unit}: " + ", ".join(
                        f"{call} {calls / mib:,.1f}" for call, calls in rows[:8]), flush=True)
            if args.measure == "sizes":
                for name in edges:
                    print(size_report(os.path.join(out, f"sizes.{name}"), name, mib, unit),
                          flush=True)
            if args.measure == "perf":
                for name in edges:
                    seconds = (ticks_after[name] - ticks_before[name]) / hz
                    shares = perf_shares(os.path.join(out, f"perf.{name}"), args.annotate)
                    print(f"{name}: " + ", ".join(
                        f"{part} {share * seconds * 1e3 / mib:,.2f}"
                        for part, share in shares.items()) + f" ms per {unit}", flush=True)
            if args.measure == "faults":
                for name in edges:
                    report = subprocess.run(
                        ["perf", "report", "-i", os.path.join(out, f"perf.{name}"), "--stdio",
                         "--no-children", "-G"], capture_output=True, text=True,
                        check=False).stdout
                    print(f"{name} page faults:\n" + "\n".join(
                        line for line in report.splitlines()[:args.annotate or 40]
                        if line.strip()))
            if args.measure == "pyspy":
                subprocess.run([sys.executable, os.path.join(harness.HERE, "pyspy_summary.py"),
                                *(os.path.join(out, f"pyspy-{name}.txt") for name in edges)],
                               check=False)
            print(f"({args.transfers} x /{args.body}, {links})")
            return
        for pid in edges.values():
            subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                           capture_output=True, timeout=300)
        grand = grand_copies = 0
        for name, pid in edges.items():
            dumps = sorted(glob.glob(os.path.join(out, f"callgrind.{pid}.*")))
            count = sum(totals(path) for path in dumps)
            rows: list[str] = []
            for path in dumps:
                text = subprocess.run(["callgrind_annotate", "--inclusive=no", path],
                                      capture_output=True, text=True, check=False).stdout
                rows += [line for line in text.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
            # Valgrind counts every byte that `rep movsb` moves as an instruction: copies
            # are shown apart, since on the CPU they cost some 30 times less than that.
            copies = sum(int(row.split()[0].replace(",", "")) for row in rows
                         if re.search(r"__mem(cpy|move|set)_", row))
            grand += count
            grand_copies += copies
            print(f"{name}: {count / 1e6:,.1f} M instructions = {count / mib / 1e6:,.3f} M/{unit}, "
                  f"of which memcpy/memset {copies / mib / 1e6:,.3f} M/{unit}", flush=True)
            # Callgrind sees no kernel: the read and write system calls, counted apart.
            reads, writes = (after - before for after, before
                             in zip(io_after[name], io_before[name]))
            print(f"{name}: {reads / mib:,.1f} read and {writes / mib:,.1f} write system "
                  f"calls per {unit}", flush=True)
            if args.annotate:
                print("\n".join(rows[: args.annotate]))
        print(f"both edges: {grand / mib / 1e6:,.3f} M instructions per {unit}, "
              f"{(grand - grand_copies) / mib / 1e6:,.3f} M without memcpy/memset "
              f"({args.transfers} x /{args.body}, {links})")
    finally:
        harness.stop_all()


if __name__ == "__main__":
    main()
