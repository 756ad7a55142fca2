"""Sends traces, logs and metrics to obsbox with the Python OpenTelemetry SDK.

Driven by tests/e2e/e2e_python_sdk.rs. Three transports are used, each with its own resource
(service.name = "py-e2e-<transport>-<run id>"):

- grpc: the SDK's OTLP/gRPC exporters (opentelemetry-exporter-otlp-proto-grpc), default settings
  except the endpoint;
- http: the SDK's OTLP/HTTP protobuf exporters (opentelemetry-exporter-otlp-proto-http), likewise;
- json: the Python SDK has no OTLP/JSON exporter, so the same telemetry is collected in memory,
  encoded with opentelemetry.exporter.otlp.proto.common's encoders (the ones the exporters use),
  converted to OTLP/JSON (integer enums, hex trace and span ids) and POSTed with urllib.

For every signal and transport the script writes `<transport>_<signal>.pb` into the output
directory: the serialized protobuf export request of exactly what the server acknowledged (all
export calls of that signal merged into one request). It exits non-zero when any export failed.

Usage: export.py OUT_DIR --grpc HOST:PORT --http HOST:PORT --run-id ID
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

from google.protobuf import json_format
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as HttpLogExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

SCHEMA_URL = "https://opentelemetry.io/schemas/1.21.0"


class Recorder:
    """Merges every acknowledged export request of one signal and transport."""

    def __init__(self, request_type):
        self.request = request_type()
        self.failures = 0

    def record(self, request) -> None:
        self.request.MergeFrom(request)


def recording(exporter_cls, encoder, recorder: Recorder, success):
    """A subclass of an SDK exporter that records what each successful export sent."""

    class RecordingExporter(exporter_cls):
        def export(self, data, *args, **kwargs):
            result = super().export(data, *args, **kwargs)
            if result == success:
                recorder.record(encoder(data))
            else:
                recorder.failures += 1
            return result

    return RecordingExporter


def make_resource(transport: str, run_id: str) -> Resource:
    return Resource.create(
        {
            "service.name": f"py-e2e-{transport}-{run_id}",
            "service.version": "1.0.0",
            "test.transport": transport,
            "test.run_id": run_id,
            "res.int": 7,
            "res.bool": True,
            "res.double": 1.5,
            "res.strings": ["a", "b"],
        },
        schema_url=SCHEMA_URL,
    )


def produce_traces_and_logs(tracer_provider, logger_provider, transport: str) -> None:
    """Nested spans of every kind with attributes of every type, events, links, an error
    status, and log records emitted inside and outside spans."""
    tracer = tracer_provider.get_tracer(
        "py-e2e-tracer",
        "2.0.1",
        schema_url=SCHEMA_URL,
        attributes={"scope.attr": "tracer"},
    )
    logger = logger_provider.get_logger(
        "py-e2e-logger", "3.1.4", schema_url=SCHEMA_URL, attributes={"scope.attr": "logger"}
    )
    every_type = {
        "attr.str": "hello <b>world</b> \u00e9\u4e16",
        "attr.int": -42,
        "attr.big": 2**62,
        "attr.float": 3.25,
        "attr.bool": True,
        "attr.strs": ["x", "y", ""],
        "attr.ints": [1, -2, 3],
        "attr.floats": [0.5, -1.25],
        "attr.bools": [True, False],
        "transport": transport,
    }
    # A separate trace that the main trace links to.
    with tracer.start_as_current_span("linked-root", kind=SpanKind.PRODUCER) as linked:
        linked.set_attribute("role", "link-target")
    link_ctx = linked.get_span_context()

    with tracer.start_as_current_span(
        "GET /checkout",
        kind=SpanKind.SERVER,
        attributes=every_type,
        links=[Link(link_ctx, {"link.kind": "follows", "link.n": 1})],
    ) as root:
        root.add_event("request.received", {"bytes": 512, "ok": True})
        logger.emit(
            body="checkout started for user 17",
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            attributes={"log.seq": 1, "user.id": 17, "ratio": 0.75, "flag": False},
        )
        with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT) as db:
            db.set_attribute("db.system", "postgresql")
            db.set_attribute("db.rows", 3)
            with tracer.start_as_current_span("decode rows", kind=SpanKind.INTERNAL) as inner:
                inner.add_event("rows.decoded", {"count": 3, "names": ["a", "b", "c"]})
                logger.emit(
                    body={"msg": "decoded", "count": 3, "nested": {"k": "v"}, "list": [1, "two"]},
                    severity_number=SeverityNumber.DEBUG,
                    severity_text="DEBUG",
                    attributes={"log.seq": 2, "strs": ["p", "q"]},
                    event_name="rows.decoded",
                )
        with tracer.start_as_current_span("charge card", kind=SpanKind.CLIENT) as charge:
            charge.set_status(Status(StatusCode.ERROR, "card declined"))
            try:
                raise ValueError("card declined: insufficient funds")
            except ValueError as error:
                charge.record_exception(error)
            logger.emit(
                body="payment failed",
                severity_number=SeverityNumber.ERROR,
                severity_text="ERROR",
                attributes={"log.seq": 3, "error.type": "ValueError"},
            )
        with tracer.start_as_current_span("consume event", kind=SpanKind.CONSUMER) as consumer:
            consumer.set_status(Status(StatusCode.OK))
        root.set_attribute("http.response.status_code", 500)
    # Outside any span: no trace context; an explicit timestamp in the past.
    logger.emit(
        timestamp=time.time_ns() - 5_000_000_000,
        body="background job finished",
        severity_number=SeverityNumber.WARN,
        severity_text="WARN",
        attributes={"log.seq": 4},
    )


def produce_metrics(meter_provider) -> None:
    """Counter, up-down counter, histogram, gauge and observable gauge, outside any span."""
    meter = meter_provider.get_meter("py-e2e-meter", "4.0.0", schema_url=SCHEMA_URL)
    counter = meter.create_counter("py_e2e_requests", unit="1", description="requests served")
    updown = meter.create_up_down_counter("py_e2e_queue_depth", unit="{item}", description="queue")
    histogram = meter.create_histogram("py_e2e_latency", unit="ms", description="latency")
    gauge = meter.create_gauge("py_e2e_temperature", unit="Cel", description="temperature")

    def observe(_options: CallbackOptions):
        yield Observation(0.875, {"cpu": "0"})
        yield Observation(0.125, {"cpu": "1"})

    meter.create_observable_gauge(
        "py_e2e_cpu_utilization", callbacks=[observe], unit="1", description="cpu"
    )
    counter.add(3, {"route": "/a", "code": 200})
    counter.add(4, {"route": "/b", "code": 500})
    counter.add(5, {"route": "/a", "code": 200})
    updown.add(10, {"queue": "q1"})
    updown.add(-3, {"queue": "q1"})
    for value in (0.5, 7.0, 12.0, 250.0, 99999.0):
        histogram.record(value, {"route": "/a"})
    histogram.record(3.0, {"route": "/b"})
    gauge.set(21.5, {"room": "kitchen"})
    gauge.set(-4.25, {"room": "freezer"})


def produce_more_metrics(meter_provider) -> None:
    """A second round so that the final export carries different cumulative values."""
    meter = meter_provider.get_meter("py-e2e-meter", "4.0.0", schema_url=SCHEMA_URL)
    meter.create_counter("py_e2e_requests", unit="1", description="requests served").add(
        2, {"route": "/b", "code": 500}
    )
    meter.create_histogram("py_e2e_latency", unit="ms", description="latency").record(
        40.0, {"route": "/b"}
    )


# --- OTLP/JSON -----------------------------------------------------------------------------

ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def hex_ids(value):
    """Rewrites base64 trace/span ids (proto3 JSON) to hex, as OTLP/JSON requires."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ID_KEYS and isinstance(item, str):
                out[key] = base64.b64decode(item).hex()
            else:
                out[key] = hex_ids(item)
        return out
    if isinstance(value, list):
        return [hex_ids(item) for item in value]
    return value


def to_otlp_json(message) -> bytes:
    as_dict = json_format.MessageToDict(message, use_integers_for_enums=True)
    return json.dumps(hex_ids(as_dict)).encode()


def post_json(url: str, message, response_type) -> None:
    request = urllib.request.Request(
        url,
        data=to_otlp_json(message),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status = response.status
            content_type = response.headers.get("Content-Type", "")
            body = response.read()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"POST {url}: HTTP {error.code}: {error.read()[:500]!r}") from error
    if status != 200:
        raise RuntimeError(f"POST {url}: HTTP {status}")
    # The response is in the request's encoding; a partial success must not reject anything.
    if body:
        if "json" in content_type:
            parsed = json.loads(body)
            rejected = parsed.get("partialSuccess", {})
            if any(int(v) for k, v in rejected.items() if k.startswith("rejected")):
                raise RuntimeError(f"POST {url}: partial success {parsed}")
        else:
            response_message = response_type()
            response_message.ParseFromString(body)
            partial = response_message.partial_success
            for field in ("rejected_spans", "rejected_log_records", "rejected_data_points"):
                if getattr(partial, field, 0):
                    raise RuntimeError(f"POST {url}: partial success {partial}")


# --- transports ----------------------------------------------------------------------------


def write(out_dir: str, name: str, message) -> None:
    with open(os.path.join(out_dir, name), "wb") as file:
        file.write(message.SerializeToString())


def run_sdk_exporters(transport: str, endpoint: str, run_id: str, out_dir: str) -> int:
    """grpc or http: the SDK's exporters with default settings except the endpoint."""
    traces = Recorder(ExportTraceServiceRequest)
    logs = Recorder(ExportLogsServiceRequest)
    metrics = Recorder(ExportMetricsServiceRequest)
    if transport == "grpc":
        span_cls = recording(GrpcSpanExporter, encode_spans, traces, SpanExportResult.SUCCESS)
        log_cls = recording(GrpcLogExporter, encode_logs, logs, LogRecordExportResult.SUCCESS)
        metric_cls = recording(
            GrpcMetricExporter, encode_metrics, metrics, MetricExportResult.SUCCESS
        )
        span_exporter = span_cls(endpoint=f"http://{endpoint}")
        log_exporter = log_cls(endpoint=f"http://{endpoint}")
        metric_exporter = metric_cls(endpoint=f"http://{endpoint}")
    else:
        span_cls = recording(HttpSpanExporter, encode_spans, traces, SpanExportResult.SUCCESS)
        log_cls = recording(HttpLogExporter, encode_logs, logs, LogRecordExportResult.SUCCESS)
        metric_cls = recording(
            HttpMetricExporter, encode_metrics, metrics, MetricExportResult.SUCCESS
        )
        span_exporter = span_cls(endpoint=f"http://{endpoint}/v1/traces")
        log_exporter = log_cls(endpoint=f"http://{endpoint}/v1/logs")
        metric_exporter = metric_cls(endpoint=f"http://{endpoint}/v1/metrics")

    resource = make_resource(transport, run_id)
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[reader], shutdown_on_exit=False
    )

    produce_traces_and_logs(tracer_provider, logger_provider, transport)
    produce_metrics(meter_provider)
    ok = tracer_provider.force_flush(30_000)
    ok = logger_provider.force_flush(30_000) and ok
    ok = meter_provider.force_flush(30_000) and ok
    produce_more_metrics(meter_provider)
    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown()

    write(out_dir, f"{transport}_traces.pb", traces.request)
    write(out_dir, f"{transport}_logs.pb", logs.request)
    write(out_dir, f"{transport}_metrics.pb", metrics.request)
    failures = traces.failures + logs.failures + metrics.failures
    if not ok or failures:
        print(f"{transport}: {failures} export(s) failed (flush ok: {ok})", file=sys.stderr)
        return 1
    return 0


def run_json(endpoint: str, run_id: str, out_dir: str) -> int:
    """OTLP/JSON over HTTP: collect in memory, encode, convert, POST."""
    resource = make_resource("json", run_id)
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    log_records = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_records))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[reader], shutdown_on_exit=False
    )

    produce_traces_and_logs(tracer_provider, logger_provider, "json")
    produce_metrics(meter_provider)

    trace_request = encode_spans(spans.get_finished_spans())
    logs_request = encode_logs(log_records.get_finished_logs())
    metrics_request = encode_metrics(reader.get_metrics_data())
    produce_more_metrics(meter_provider)
    metrics_request_2 = encode_metrics(reader.get_metrics_data())

    base = f"http://{endpoint}"
    post_json(f"{base}/v1/traces", trace_request, ExportTraceServiceResponse)
    post_json(f"{base}/v1/logs", logs_request, ExportLogsServiceResponse)
    post_json(f"{base}/v1/metrics", metrics_request, ExportMetricsServiceResponse)
    post_json(f"{base}/v1/metrics", metrics_request_2, ExportMetricsServiceResponse)
    metrics_request.MergeFrom(metrics_request_2)

    write(out_dir, "json_traces.pb", trace_request)
    write(out_dir, "json_logs.pb", logs_request)
    write(out_dir, "json_metrics.pb", metrics_request)
    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--grpc", required=True, help="OTLP/gRPC address, HOST:PORT")
    parser.add_argument("--http", required=True, help="OTLP/HTTP address, HOST:PORT")
    parser.add_argument("--run-id", required=True)
    parser.add_argument(
        "--transports", default="grpc,http,json", help="comma-separated subset of grpc,http,json"
    )
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    status = 0
    for transport in args.transports.split(","):
        if transport == "json":
            status |= run_json(args.http, args.run_id, args.out_dir)
        elif transport == "grpc":
            status |= run_sdk_exporters("grpc", args.grpc, args.run_id, args.out_dir)
        elif transport == "http":
            status |= run_sdk_exporters("http", args.http, args.run_id, args.out_dir)
        else:
            parser.error(f"unknown transport {transport}")
    return status


if __name__ == "__main__":
    sys.exit(main())
