#!/usr/bin/env python3
"""OTLP receiver for hostscope's export tests, built on the OpenTelemetry project's own
`opentelemetry-proto` package (generated messages and gRPC services) and grpcio; OTLP/HTTP
is a plain http.server handler. Every request is decoded and appended as one JSON line to
--out:

  {"signal": "metrics", "transport": "grpc", "answer": "ok", "headers": {...},
   "received_unix_ns": ..., "request": <MessageToDict of the Export*ServiceRequest>}

Failure injection: the first --fail-count requests are answered with --fail (a gRPC code
name or an HTTP status), optionally with --retry-after seconds; --delay sleeps before each
answer (slow backend); --partial N reports N rejected items in a successful answer.
Prints "READY <port>" once listening.
"""
import argparse
import gzip
import email.utils
import json
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import zstandard
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()
STATE = {"seen": 0}

SIGNALS = {
    "metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "rejected_data_points",
    ),
    "traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "rejected_spans",
    ),
    "logs": (
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "rejected_log_records",
    ),
}


def record(args, signal, transport, answer, headers, request):
    line = {
        "signal": signal,
        "transport": transport,
        "answer": answer,
        "headers": headers,
        "received_unix_ns": time.time_ns(),
        "request": MessageToDict(request) if request is not None else None,
    }
    with LOCK:
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")


def decide(args):
    """The answer for the next request: None for success, else the failure to send."""
    with LOCK:
        STATE["seen"] += 1
        n = STATE["seen"]
    if args.delay:
        time.sleep(args.delay)
    if args.fail and n <= args.fail_count:
        return args.fail
    return None


def response(args, signal):
    _, resp_type, field = SIGNALS[signal]
    resp = resp_type()
    if args.partial:
        setattr(resp.partial_success, field, args.partial)
        resp.partial_success.error_message = "test receiver rejects some"
    return resp


def grpc_handler(args, signal):
    def export(request, context):
        headers = {k: v for k, v in context.invocation_metadata()}
        failure = decide(args)
        if failure:
            code = getattr(grpc.StatusCode, failure)
            if args.retry_after is not None:
                # google.rpc.Status{code, message, details:[Any(RetryInfo)]}, hand-encoded
                # so the test needs no googleapis-common-protos.
                delay = varint_field(1, int(args.retry_after))
                retry_info = len_field(1, delay)
                any_msg = len_field(1, b"type.googleapis.com/google.rpc.RetryInfo") + len_field(2, retry_info)
                status = varint_field(1, code.value[0]) + len_field(2, b"retry") + len_field(3, any_msg)
                context.set_trailing_metadata((("grpc-status-details-bin", status),))
            record(args, signal, "grpc", failure, headers, request)
            context.abort(code, "injected by the test receiver")
        record(args, signal, "grpc", "ok", headers, request)
        return response(args, signal)

    return export


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def varint_field(tag, n):
    return varint(tag << 3) + varint(n)


def len_field(tag, data):
    return varint(tag << 3 | 2) + varint(len(data)) + data


def serve_grpc(args):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        Export = staticmethod(grpc_handler(args, "metrics"))

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        Export = staticmethod(grpc_handler(args, "traces"))

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        Export = staticmethod(grpc_handler(args, "logs"))

    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    addr = f"127.0.0.1:{args.port}"
    if args.cert:
        key = open(args.key, "rb").read()
        cert = open(args.cert, "rb").read()
        client_ca = open(args.client_ca, "rb").read() if args.client_ca else None
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=bool(client_ca)
        )
        port = server.add_secure_port(addr, creds)
    else:
        port = server.add_insecure_port(addr)
    server.start()
    print(f"READY {port}", flush=True)
    server.wait_for_termination()


def serve_http(args):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            signal = {"/v1/metrics": "metrics", "/v1/traces": "traces", "/v1/logs": "logs"}.get(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if signal is None:
                return self.answer(404, b"")
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            elif headers.get("content-encoding") == "zstd":
                # A decompressobj copes with frames that do not state their size.
                body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
            req = SIGNALS[signal][0]()
            req.ParseFromString(body)
            failure = decide(args)
            if failure:
                record(args, signal, "http", failure, headers, req)
                extra = {}
                if args.retry_after is not None and args.retry_after_date:
                    # The HTTP-date form (RFC 9110): whole seconds, so a delay of N
                    # seconds lands between N-1 and N after this answer.
                    at = time.time() + args.retry_after
                    extra["Retry-After"] = email.utils.formatdate(at, usegmt=True)
                elif args.retry_after is not None:
                    extra["Retry-After"] = str(int(args.retry_after))
                return self.answer(int(failure), b"injected", extra)
            record(args, signal, "http", "ok", headers, req)
            self.answer(200, response(args, signal).SerializeToString())

        def answer(self, status, body, extra=None):
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.cert:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            ctx.load_verify_locations(args.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--fail", help="gRPC code name (UNAVAILABLE) or HTTP status (503)")
    p.add_argument("--fail-count", type=int, default=0)
    p.add_argument("--retry-after", type=float)
    p.add_argument(
        "--retry-after-date",
        action="store_true",
        help="send Retry-After (HTTP) as an HTTP-date instead of seconds",
    )
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--partial", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--client-ca")
    args = p.parse_args()
    (serve_grpc if args.protocol == "grpc" else serve_http)(args)


if __name__ == "__main__":
    sys.exit(main())
