#!/usr/bin/env python3
"""Byte streams and gRPC through the mesh, edge → edge, against the same thing direct.

    PYTHONPATH=. /work/main/.venv/bin/python bench/streams.py [--size-mib 256] [--reps 3]
        [--grpc-seconds 10] [--grpc-concurrency 16] [--tls]

What runs (harness.py's mesh: ``twistd edgemesh-router`` and two ``twistd edgemesh-edge`` on
MESH_CPU; the origins and this client on LOADGEN_CPU):

- a TCP echo origin (``tcp-bulk`` port of Service ``bulk``, endpoint on edge-2) and a gRPC
  origin (grpcio's asyncio server, ``grpc`` port of Service ``grpc-echo``, endpoint on edge-2);
- (a) throughput: SIZE MiB up and the same echoed back at once on one TCP connection, direct
  to the origin and through edge-1's proxy port by ``CONNECT bulk:7`` (edge-1 → edge-2's hub →
  origin); the bytes back are checked (count; a sha256 on the first, unmeasured, transfer);
- (b) gRPC unary calls (100-byte messages) for SECONDS with CONCURRENCY calls in flight on one
  channel (grpc.aio), direct and through edge-1 by grpcio's ``grpc.http_proxy`` (CONNECT):
  calls/s, p50 and p99 of each call's latency.

Each rep measures direct, then the mesh, back to back (the machine may be shared: both see the
same load); the table shows medians over the reps and the ratios mesh ÷ direct.  Also: CPU
seconds of the mesh processes per GiB carried, and each process's peak RSS.  Results go to
``bench/results/streams-<UTC stamp>/``.  Every process started is stopped by its PID.
Environment: PYTHON (the mesh's interpreter; default this one), BASE_PORT (default 18480; the
next 10 ports too), LOADGEN_CPU, MESH_CPU, IDLE_WAIT (default 5), IDLE_BUSY, READY_TIMEOUT.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("PYTHON", sys.executable)
os.environ.setdefault("BASE_PORT", "18480")
os.environ.setdefault("IDLE_WAIT", "5")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # after the environment it reads

ECHO_PORT = harness.PORTS["origin"]  # the harness's origin port: no nginx runs here
GRPC_PORT = int(harness.CFG["BASE_PORT"]) + 9
CHUNK = 1 << 20
MESSAGE = b"m" * 100
MESH_PROCS = harness.MESH_PROCS


# ----------------------------------------------------------------- origins (subprocesses)
def serve_echo(port: int) -> None:
    """Echo every byte back; on the client's FIN, finish and half-close (a thread per
    connection: blocking sockets, 1 MiB reads, as little Python per byte as possible)."""

    def echo(conn: socket.socket) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with conn:
            try:
                while n := conn.recv_into(buf):
                    conn.sendall(view[:n])
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    with socket.create_server(("127.0.0.1", port), backlog=64) as listener:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()


def serve_grpc(port: int) -> None:
    import grpc

    async def unary(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=None)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Unary": handler}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


# ----------------------------------------------------------------- catalog
def catalog_objects() -> list[dict[str, Any]]:
    def node(name: str, edge: bool) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
        if edge:
            meta["labels"]["node-role.kubernetes.io/edge"] = ""
            meta["annotations"] = {
                "edgemesh.io/hub-address": f"127.0.0.1:{harness.PORTS[name + '-hub']}"}
        return {"apiVersion": "v1", "kind": "Node", "metadata": meta}

    def service(name: str, ip: str, port_name: str, port: int, pod_port: int,
                ) -> list[dict[str, Any]]:
        return [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": name, "namespace": "default"},
             "spec": {"clusterIP": ip, "ports": [
                 {"name": port_name, "port": port, "targetPort": pod_port, "protocol": "TCP"}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-bench", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4",
             "ports": [{"name": port_name, "port": pod_port, "protocol": "TCP"}],
             "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                            "nodeName": "edge-2",
                            "targetRef": {"kind": "Pod", "name": f"{name}-0",
                                          "namespace": "default"}}]},
        ]

    return [node("cloud-1", False), node("edge-1", True), node("edge-2", True),
            *service("bulk", "10.96.0.31", "tcp-bulk", 7, ECHO_PORT),
            *service("grpc-echo", "10.96.0.32", "grpc", 50051, GRPC_PORT)]


def write_catalog(path: str) -> None:
    # JSON documents are YAML: one per object, separated by "---".
    with open(path, "w") as f:
        f.write("".join("---\n" + json.dumps(obj) + "\n" for obj in catalog_objects()))


# ----------------------------------------------------------------- (a) throughput
def connect(port: int, target: bytes | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if target is not None:
        sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            if not byte:
                raise RuntimeError(f"CONNECT {target!r}: closed after {head!r}")
            head += byte
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"CONNECT {target!r}: {head.splitlines()[0]!r}")
    return sock


def echo_transfer(port: int, target: bytes | None, size: int, check: bool) -> float:
    """``size`` bytes up while they come back; the seconds from the first byte sent to the
    far end's FIN.  With ``check``, the bytes back must hash as the bytes sent."""
    chunk = os.urandom(CHUNK)
    sock = connect(port, target)
    errors: list[BaseException] = []
    with sock:
        def send() -> None:
            try:
                for _ in range(size // CHUNK):
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)
            except OSError as error:
                errors.append(error)

        sender = threading.Thread(target=send, daemon=True)
        received = hashlib.sha256() if check else None
        buf = bytearray(CHUNK)
        got = 0
        start = time.perf_counter()
        sender.start()
        while n := sock.recv_into(buf):
            got += n
            if received is not None:
                received.update(memoryview(buf)[:n])
        took = time.perf_counter() - start
        sender.join(60)
    if errors:
        raise RuntimeError(f"sending failed: {errors[0]}")
    if got != size:
        raise RuntimeError(f"{got} bytes came back, {size} were sent")
    if received is not None and received.digest() != hashlib.sha256(
            chunk * (size // CHUNK)).digest():
        raise RuntimeError("the bytes that came back differ from those sent")
    return took


# ----------------------------------------------------------------- (b) gRPC
def grpc_run(proxy_port: int | None, seconds: float, concurrency: int) -> dict[str, Any]:
    """CONCURRENCY loops of unary calls on one channel for SECONDS; calls/s and latencies."""
    import grpc

    options: list[tuple[str, Any]] = [("grpc.enable_retries", 0)]
    if proxy_port is None:
        options.append(("grpc.enable_http_proxy", 0))
        target = f"127.0.0.1:{GRPC_PORT}"
    else:
        options.append(("grpc.http_proxy", f"http://127.0.0.1:{proxy_port}"))
        target = "grpc-echo.default:50051"

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        failures: list[str] = []
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            call = channel.unary_unary("/bench.Echo/Unary")
            for _ in range(50):  # warm-up: the connection (and the CONNECT) is set up here
                if await call(MESSAGE, timeout=30) != MESSAGE:
                    raise RuntimeError("gRPC: wrong echo")
            end = time.perf_counter() + seconds

            async def loop() -> None:
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    try:
                        reply = await call(MESSAGE, timeout=30)
                    except grpc.RpcError as error:
                        failures.append(str(error.code()))
                        continue
                    latencies.append(time.perf_counter() - t0)
                    if reply != MESSAGE:
                        failures.append("wrong echo")

            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            wall = time.perf_counter() - start
        latencies.sort()

        def pct(p: float) -> float | None:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3 \
                if latencies else None

        return {"calls": len(latencies), "calls_per_s": len(latencies) / wall,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "failures": len(failures),
                "failure_kinds": sorted(set(failures))[:5], "wall_s": wall}

    return asyncio.run(main())


# ----------------------------------------------------------------- measuring
class Meter:
    """CPU of the mesh processes, the origins, this process and everyone else, over a run."""

    def __init__(self, mesh: dict[str, harness.Proc], origins: list[harness.Proc]) -> None:
        self.mesh = {name: proc.pid for name, proc in mesh.items()}
        self.origins = [pid for proc in origins for pid in harness.tree(proc.pid)]

    def __enter__(self) -> Meter:  # noqa: PYI034  (a plain class, never subclassed)
        self.waited = harness.wait_quiet()
        self.c0 = harness.cpu_times()
        self.m0 = {n: harness.cpu_ticks(p) for n, p in self.mesh.items()}
        self.o0 = sum(harness.cpu_ticks(p) for p in self.origins)
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.w0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.w0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        o1 = sum(harness.cpu_ticks(p) for p in self.origins)
        m1 = {n: harness.cpu_ticks(p) for n, p in self.mesh.items()}
        c1 = harness.cpu_times()
        tck = harness.CLK_TCK
        self.mesh_s = {n: (m1[n] - self.m0[n]) / tck for n in self.mesh}
        own = (r1.ru_utime - self.r0.ru_utime) + (r1.ru_stime - self.r0.ru_stime)
        busy = sum((c1[c][0] - self.c0[c][0]) - (c1[c][1] - self.c0[c][1]) for c in c1) / tck
        ours = sum(self.mesh_s.values()) + own + (o1 - self.o0) / tck
        self.others_pct = max(0.0, 100.0 * (busy - ours) / wall)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="each way, per transfer")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--grpc-seconds", type=float, default=10.0)
    parser.add_argument("--grpc-concurrency", type=int, default=16)
    parser.add_argument("--tls", action="store_true", help="mutual-TLS links between nodes")
    parser.add_argument("--skip", choices=("bulk", "grpc"), action="append", default=[])
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # an origin, in its own process
        (serve_echo if args.serve[0] == "echo" else serve_grpc)(int(args.serve[1]))
        return
    ports = [*harness.PORTS.values(), GRPC_PORT]
    busy = [p for p in ports if harness.port_open(p)]
    if busy:
        sys.exit(f"ports already in use: {busy}: set BASE_PORT")
    cfg = harness.CFG
    os.sched_setaffinity(0, {int(cfg["LOADGEN_CPU"])})  # this client, with the origins
    size = args.size_mib << 20
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    outdir = os.path.join(cfg["RESULTS_DIR"], "streams-" + stamp)
    os.makedirs(outdir, exist_ok=True)
    harness.OUTDIR = outdir
    tmp = tempfile.mkdtemp(prefix="edgemesh-streams-")
    write_catalog(os.path.join(tmp, "catalog.yaml"))
    me = os.path.abspath(__file__)
    reps: dict[str, list[dict[str, Any]]] = {"bulk": [], "grpc": []}
    hwm: dict[str, int] = {}
    try:
        origins = [harness.spawn(f"origin-{kind}", [sys.executable, me, "--serve", kind,
                                                    str(port)], cfg["LOADGEN_CPU"], tmp)
                   for kind, port in (("echo", ECHO_PORT), ("grpc", GRPC_PORT))]
        for proc, port in zip(origins, (ECHO_PORT, GRPC_PORT)):
            harness.wait_port(port, proc)
        mesh = harness.start_mesh(tmp, 0, args.tls)
        proxy = harness.PORTS["edge-1-proxy"]
        # Correctness first, unmeasured: every byte back, through both ways.
        for port, target in ((ECHO_PORT, None), (proxy, b"bulk:7")):
            echo_transfer(port, target, 16 << 20, check=True)
        for rep in range(args.reps):
            if "bulk" not in args.skip:
                row: dict[str, Any] = {}
                for way, port, target in (("direct", ECHO_PORT, None),
                                          ("mesh", proxy, b"bulk:7")):
                    with Meter(mesh, origins) as meter:
                        took = echo_transfer(port, target, size, check=False)
                    row[way] = {"seconds": took, "mib_per_s": 2 * args.size_mib / took,
                                "mesh_cpu_s": meter.mesh_s, "others_pct": meter.others_pct}
                harness.log(f"rep {rep} bulk: direct {row['direct']['mib_per_s']:.0f} MiB/s, "
                            f"mesh {row['mesh']['mib_per_s']:.0f} MiB/s (both ways summed); "
                            f"others' CPU {row['mesh']['others_pct']:.0f}%")
                reps["bulk"].append(row)
            if "grpc" not in args.skip:
                row = {}
                for way, via in (("direct", None), ("mesh", proxy)):
                    with Meter(mesh, origins) as meter:
                        got = grpc_run(via, args.grpc_seconds, args.grpc_concurrency)
                    if got["failures"]:
                        raise RuntimeError(f"gRPC {way}: {got['failures']} failed calls "
                                           f"{got['failure_kinds']}")
                    row[way] = {**got, "mesh_cpu_s": meter.mesh_s,
                                "others_pct": meter.others_pct}
                harness.log(f"rep {rep} grpc: direct {row['direct']['calls_per_s']:.0f}/s "
                            f"p99 {row['direct']['p99_ms']:.2f} ms, mesh "
                            f"{row['mesh']['calls_per_s']:.0f}/s p99 "
                            f"{row['mesh']['p99_ms']:.2f} ms; others' CPU "
                            f"{row['mesh']['others_pct']:.0f}%")
                reps["grpc"].append(row)
        hwm = {name: harness.status_kib(proc.pid, "VmHWM") for name, proc in mesh.items()}
        for name, proc in mesh.items():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} died:\n{harness.tail(proc.log)}")
    finally:
        harness.stop_all()
        for fn in os.listdir(tmp):
            if fn.endswith((".out", ".log")) and os.path.getsize(os.path.join(tmp, fn)):
                os.replace(os.path.join(tmp, fn), os.path.join(outdir, "log-" + fn))

    text = report(args, reps, hwm)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump({"config": {**cfg, **vars(args)}, "reps": reps, "vmhwm_kib": hwm}, f,
                  indent=1)
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print("\nresults: " + outdir)


def report(args: argparse.Namespace, reps: dict[str, list[dict[str, Any]]],
           hwm: dict[str, int]) -> str:
    links = "mutual-TLS" if args.tls else "plaintext"
    lines = [(f"edge → edge = client → edge-1 proxy (CONNECT) → edge-2 hub ({links} link) → "
              f"origin; medians of {args.reps} reps, direct and mesh back to back in each rep"),
             "", "| measure | direct | edge → edge | mesh ÷ direct | mesh CPU | others' CPU % |",
             "|---|---:|---:|---:|---:|---:|"]
    if reps["bulk"]:
        d = median([r["direct"]["mib_per_s"] for r in reps["bulk"]])
        m = median([r["mesh"]["mib_per_s"] for r in reps["bulk"]])
        per_gib = median([sum(r["mesh"]["mesh_cpu_s"].values()) * 1024
                          / (2 * args.size_mib) for r in reps["bulk"]])
        others = median([r["mesh"]["others_pct"] for r in reps["bulk"]])
        lines.append(f"| {args.size_mib} MiB each way at once, MiB/s (up + down) | "
                     f"{fmt(d, '.0f')} | {fmt(m, '.0f')} | {fmt(ratio(m, d), '.2f')} | "
                     f"{fmt(per_gib, '.1f')} s/GiB | {fmt(others, '.0f')} |")
    if reps["grpc"]:
        def col(way: str, key: str) -> float | None:
            return median([r[way][key] for r in reps["grpc"]])

        calls = sum(r["mesh"]["calls"] for r in reps["grpc"])
        cpu = sum(sum(r["mesh"]["mesh_cpu_s"].values()) for r in reps["grpc"])
        others = median([r["mesh"]["others_pct"] for r in reps["grpc"]])
        direct_rate, mesh_rate = col('direct', 'calls_per_s'), col('mesh', 'calls_per_s')
        lines.append(f"| gRPC unary, calls/s ({args.grpc_concurrency} in flight, one channel) | "
                     f"{fmt(direct_rate, '.0f')} | "
                     f"{fmt(mesh_rate, '.0f')} | "
                     f"{fmt(ratio(mesh_rate, direct_rate), '.2f')}"
                     f" | {fmt(cpu * 1e6 / calls if calls else None, '.0f')} µs/call | "
                     f"{fmt(others, '.0f')} |")
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            lines.append(f"| gRPC unary, {label} ms | {fmt(col('direct', key), '.2f')} | "
                         f"{fmt(col('mesh', key), '.2f')} | "
                         f"{fmt(ratio(col('mesh', key), col('direct', key)), '.2f')} | | |")
    lines += ["", ("mesh CPU = utime+stime of router + edge-1 + edge-2 during the mesh runs; "
                   "others' CPU = busy time of both CPUs that neither the mesh, the origins nor "
                   "this client used (someone else's load: above ~5 the row is suspect)."),
              "peak RSS (VmHWM) after all runs: "
              + ", ".join(f"{n} {kib / 1024:.1f} MiB" for n, kib in hwm.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
