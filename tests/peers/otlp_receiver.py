"""An OTLP/HTTP trace receiver for tests/tracing.rs.

POST /v1/traces takes an ExportTraceServiceRequest in protobuf (what
costguard sends), decoded with the OpenTelemetry project's own generated
classes (opentelemetry-proto), and answers an empty
ExportTraceServiceResponse. GET /spans returns every span received so far
as JSON: ids in lower-case hex, the resource's and the span's attributes.
POST /fail makes the next N export calls answer 503 (body: N).

Usage: otlp_receiver.py PORT  (0: any free port; the first line printed
is the port). Listens on 127.0.0.1 only.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SPANS = []
FAIL = [0]
LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/spans":
            return self.reply(404, b"", "text/plain")
        with LOCK:
            body = json.dumps(SPANS).encode()
        self.reply(200, body, "application/json")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        if self.path == "/fail":
            with LOCK:
                FAIL[0] = int(data or b"1")
            return self.reply(200, b"", "text/plain")
        if self.path != "/v1/traces":
            return self.reply(404, b"", "text/plain")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.reply(415, b"", "text/plain")
        with LOCK:
            if FAIL[0] > 0:
                FAIL[0] -= 1
                return self.reply(503, b"", "text/plain")
        req = ExportTraceServiceRequest()
        req.ParseFromString(data)
        got = []
        for rs in req.resource_spans:
            resource = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        {
                            "resource": resource,
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "flags": s.flags,
                            "attributes": attrs(s.attributes),
                            "status_code": s.status.code,
                        }
                    )
        with LOCK:
            SPANS.extend(got)
        self.reply(
            200,
            ExportTraceServiceResponse().SerializeToString(),
            "application/x-protobuf",
        )


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
