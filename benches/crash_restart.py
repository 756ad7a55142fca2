#!/usr/bin/env python3
"""Restart after a crash under full load: how long until obsbox accepts OTLP again.

Starts target/release/obsbox on a fresh data dir, loads it over OTLP/HTTP with 4 senders of
512-span protobuf requests (~500 B spans, 10 attributes, traces of 25 spans) for a while, kills
it with SIGKILL while they still send, starts it again on the same dir and measures the time from
exec until the OTLP/gRPC port accepts connections, and until `/readyz` answers 200, which it does
once the write-ahead log records the index had not committed are replayed and visible. The payload is
encoded by hand below (the fields are few), so the script needs nothing but Python 3.

Usage: cargo build --release && python3 benches/crash_restart.py [load seconds] [runs]
"""
import http.client
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "obsbox")
GRPC, HTTP, UI = 34417, 34418, 36786


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(num, payload):  # length-delimited field
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def fixed64(num, v):
    return varint(num << 3 | 1) + struct.pack("<Q", v)


def kv(key, value):
    return ld(1, key.encode()) + ld(2, ld(1, value.encode()))  # KeyValue{key, AnyValue{string_value}}


def request(rng, now_ns):
    """An ExportTraceServiceRequest of 512 spans in traces of 25 spans, over 4 services."""
    groups = []
    for service in range(4):
        spans = []
        for _ in range(128):
            if len(spans) % 25 == 0:
                trace_id = rng.randbytes(16)
            start = now_ns + rng.randrange(10**9)
            attrs = b"".join(ld(9, kv(k, v)) for k, v in [
                ("http.request.method", "GET"),
                ("http.route", "/api/orders/{id}"),
                ("url.full", f"https://shop.example/api/orders/{rng.randrange(10**9)}"),
                ("http.response.status_code", rng.choice(["200", "200", "200", "500"])),
                ("server.address", "orders.internal"),
                ("user.id", f"user-{rng.randrange(10**6)}"),
                ("session.id", rng.randbytes(8).hex()),
                ("request.id", rng.randbytes(12).hex()),
                ("db.system", "postgresql"),
                ("network.peer.address", f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"),
            ])
            spans.append(ld(1, trace_id) + ld(2, rng.randbytes(8)) + ld(5, b"GET /api/orders/{id}")
                         + varint(6 << 3) + varint(2) + fixed64(7, start)
                         + fixed64(8, start + rng.randrange(10**8)) + attrs)
        resource = ld(1, kv("service.name", f"svc-{service}")) + ld(1, kv("host.name", "bench"))
        scope_spans = ld(1, ld(1, b"bench")) + b"".join(ld(2, s) for s in spans)
        groups.append(ld(1, ld(1, resource) + ld(2, scope_spans)))
    return b"".join(groups)


def start(data_dir, log):
    started = time.time()
    p = subprocess.Popen(
        [BINARY, "--data-dir", data_dir, "--otlp-grpc-addr", f"127.0.0.1:{GRPC}",
         "--otlp-http-addr", f"127.0.0.1:{HTTP}", "--http-addr", f"127.0.0.1:{UI}"],
        stdout=log, stderr=subprocess.STDOUT)
    while time.time() < started + 60:
        try:
            socket.create_connection(("127.0.0.1", GRPC), timeout=0.05).close()
            return p, started, (time.time() - started) * 1000
        except OSError:
            time.sleep(0.002)
    p.kill()
    sys.exit("obsbox did not accept OTLP within 60 s")


def sender(bodies, stop, acked):
    conn = http.client.HTTPConnection("127.0.0.1", HTTP, timeout=30)
    i = random.randrange(len(bodies))
    while not stop.is_set():
        try:
            conn.request("POST", "/v1/traces", bodies[i % len(bodies)],
                         {"Content-Type": "application/x-protobuf"})
            answer = conn.getresponse()
            answer.read()
            if answer.status == 200:
                acked[0] += 512
                i += 1
            else:
                time.sleep(0.05)  # refused (429/503): retry after a pause, as the SDKs do
        except OSError:
            return  # killed


def main():
    load_secs = float(sys.argv[1]) if len(sys.argv) > 1 else 8
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rng = random.Random(7)
    now_ns = time.time_ns()
    bodies = [request(rng, now_ns) for _ in range(40)]
    print(f"{len(bodies)} requests of 512 spans, {sum(map(len, bodies)) / len(bodies) / 512:.0f} B per span")
    for run in range(runs):
        with tempfile.TemporaryDirectory() as d, open(os.path.join(d, "log"), "w+") as log:
            data = os.path.join(d, "data")
            p, _, _ = start(data, log)
            stop, acked = threading.Event(), [0]
            threads = [threading.Thread(target=sender, args=(bodies, stop, acked)) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(load_secs)
            p.send_signal(signal.SIGKILL)
            p.wait()
            stop.set()
            for t in threads:
                t.join()
            log.seek(0, os.SEEK_END)
            mark = log.tell()
            p, started, ms = start(data, log)
            ready_ms = None
            while ready_ms is None and time.time() < started + 60:
                try:
                    ui = http.client.HTTPConnection("127.0.0.1", UI, timeout=1)
                    ui.request("GET", "/readyz")
                    if ui.getresponse().status == 200:
                        ready_ms = (time.time() - started) * 1000
                except OSError:
                    pass
                time.sleep(0.005)
            time.sleep(0.5)
            p.terminate()
            p.wait()
            log.seek(mark)
            line = next((l for l in log.read().splitlines() if "write-ahead log records" in l), "")
            replayed = re.search(r"traces\D{0,3}(\d+)", line)
            records = replayed.group(1) if replayed else "0"
            print(f"run {run}: {acked[0] / load_secs / 1000:.1f}k spans/s acknowledged over HTTP for {load_secs:.0f} s, "
                  f"SIGKILL; restarted and accepting OTLP after {ms:.0f} ms, ready (the replay visible) after "
                  f"{ready_ms or float('nan'):.0f} ms; {records} WAL records (requests of 512 spans) replayed")


main()
