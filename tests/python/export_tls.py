"""Exports a span and a log record with the Python OpenTelemetry SDK over TLS.

Driven by tests/e2e/tls.rs. TLS is configured the way a user would, through the SDK's standard
environment variables, which the test sets: OTEL_EXPORTER_OTLP_CERTIFICATE (the CA to trust),
OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY (mTLS), and
OTEL_EXPORTER_OTLP_TIMEOUT (so refused exports fail quickly).

For each transport (the SDK's OTLP/gRPC and OTLP/HTTP protobuf exporters) the service is named
`<service>-<transport>` and one line is printed: `<transport> ok` when both exports succeeded,
`<transport> failed` otherwise. The exit status is 0 only when every transport succeeded.

Usage: export_tls.py --grpc HOST:PORT --http HOST:PORT --service NAME [--scheme https|http]
"""

from __future__ import annotations

import argparse
import logging
import sys

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult


class Recording:
    """Wraps an exporter and remembers whether every export succeeded."""

    def __init__(self, exporter, success):
        self.exporter = exporter
        self.success = success
        self.ok = True
        self.calls = 0

    def export(self, batch, *args, **kwargs):
        self.calls += 1
        result = self.exporter.export(batch, *args, **kwargs)
        if result != self.success:
            self.ok = False
        return result

    def force_flush(self, *args, **kwargs):
        return True

    def shutdown(self, *args, **kwargs):
        return self.exporter.shutdown()


def run(transport: str, endpoint: str, service: str) -> bool:
    if transport == "grpc":
        spans = Recording(GrpcSpanExporter(endpoint=endpoint), SpanExportResult.SUCCESS)
        logs = Recording(GrpcLogExporter(endpoint=endpoint), LogRecordExportResult.SUCCESS)
    else:
        spans = Recording(HttpSpanExporter(endpoint=f"{endpoint}/v1/traces"), SpanExportResult.SUCCESS)
        logs = Recording(HttpLogExporter(endpoint=f"{endpoint}/v1/logs"), LogRecordExportResult.SUCCESS)
    resource = Resource.create({"service.name": f"{service}-{transport}"})
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    with tracer_provider.get_tracer("tls-test").start_as_current_span("tls export"):
        logger_provider.get_logger("tls-test").emit(
            body=f"over tls via {transport}", severity_number=SeverityNumber.INFO
        )
    tracer_provider.shutdown()
    logger_provider.shutdown()
    return spans.ok and logs.ok and spans.calls == 1 and logs.calls == 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--scheme", default="https", choices=["https", "http"])
    args = parser.parse_args()
    # The exporters' own log (to stderr) says why an export failed.
    logging.basicConfig(level=logging.WARNING)
    status = 0
    for transport, address in (("grpc", args.grpc), ("http", args.http)):
        ok = run(transport, f"{args.scheme}://{address}", args.service)
        print(f"{transport} {'ok' if ok else 'failed'}", flush=True)
        status |= 0 if ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
