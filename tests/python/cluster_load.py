"""Steady traces and logs from the Python OpenTelemetry SDK, recording what was acknowledged.

Driven by tests/e2e/cluster.rs. Traces go over OTLP/gRPC and logs over OTLP/HTTP protobuf, both
through the load balancer in front of the ingesters, with the SDK's batch processors and its
exporters' own retries. Each exporter is wrapped so that the items of every export call that
returned SUCCESS are appended to a file in OUT_DIR:

- acked_spans.txt: "<trace id hex> <span id hex>" per span;
- acked_logs.txt: "<log.seq>" per log record.

An export that failed after the exporter's retries is counted in failed_*.txt instead: the test
only asks that what was acknowledged is found, and that most was.

Usage: cluster_load.py OUT_DIR --grpc HOST:PORT --http HOST:PORT --service NAME --seconds N --rate TRACES_PER_S
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult


class Recording:
    """Appends lines to a file, one flush per export call."""

    def __init__(self, path: str) -> None:
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="ascii")
        self.count = 0

    def add(self, lines: list[str]) -> None:
        with self.lock:
            self.file.write("".join(line + "\n" for line in lines))
            self.file.flush()
            os.fsync(self.file.fileno())
            self.count += len(lines)


class RecordingSpanExporter(OTLPSpanExporter):
    def __init__(self, acked: Recording, failed: Recording, **kw) -> None:
        super().__init__(**kw)
        self.acked, self.failed = acked, failed

    def export(self, spans):
        result = super().export(spans)
        lines = [f"{s.context.trace_id:032x} {s.context.span_id:016x}" for s in spans]
        (self.acked if result == SpanExportResult.SUCCESS else self.failed).add(lines)
        return result


class RecordingLogExporter(OTLPLogExporter):
    def __init__(self, acked: Recording, failed: Recording, **kw) -> None:
        super().__init__(**kw)
        self.acked, self.failed = acked, failed

    def export(self, batch):
        result = super().export(batch)
        lines = [str(r.log_record.attributes["log.seq"]) for r in batch]
        (self.acked if result == LogRecordExportResult.SUCCESS else self.failed).add(lines)
        return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)

    def recording(name: str) -> Recording:
        return Recording(os.path.join(args.out_dir, name))

    resource = Resource.create({"service.name": args.service, "service.instance.id": str(os.getpid())})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            RecordingSpanExporter(
                recording("acked_spans.txt"),
                recording("failed_spans.txt"),
                endpoint=f"http://{args.grpc}",
                insecure=True,
                timeout=30,
            ),
            schedule_delay_millis=200,
            max_export_batch_size=256,
        )
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(
            RecordingLogExporter(
                recording("acked_logs.txt"),
                recording("failed_logs.txt"),
                endpoint=f"http://{args.http}/v1/logs",
                timeout=30,
            ),
            schedule_delay_millis=200,
            max_export_batch_size=256,
        )
    )
    tracer = tracer_provider.get_tracer("cluster-load")
    logger = logger_provider.get_logger("cluster-load")

    deadline = time.monotonic() + args.seconds
    interval = 1.0 / args.rate
    seq = 0
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        with tracer.start_as_current_span("GET /orders", attributes={"http.request.method": "GET"}):
            with tracer.start_as_current_span("SELECT orders", attributes={"db.system": "postgresql"}):
                pass
            with tracer.start_as_current_span("publish order.created"):
                seq += 1
                # Emitted inside the span: the SDK takes trace and span id from the current context.
                logger.emit(
                    body=f"order {seq} created",
                    severity_number=SeverityNumber.INFO,
                    severity_text="INFO",
                    attributes={"log.seq": seq},
                )
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    tracer_provider.force_flush(60_000)
    logger_provider.force_flush(60_000)
    tracer_provider.shutdown()
    logger_provider.shutdown()
    print(f"sent {seq} traces", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
