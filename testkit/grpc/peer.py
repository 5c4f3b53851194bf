"""A real gRPC server and client (grpcio, no generated code) for the gRPC end-to-end test.

    peer.py serve              prints the h2c port it listens on, then serves until killed
    peer.py call ADDR CA NAME  calls every method through ADDR over TLS (trusting CA, with SNI and
                               :authority NAME) and prints one JSON object with what it saw

Messages are raw bytes (no protobuf), so the wire is gRPC framing over HTTP/2 exactly as any
gRPC client and server speak it: length-prefixed messages, `te: trailers`, and the status in
trailers.
"""

import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"
MAX_MESSAGE = 16 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


def unary(request, context):
    metadata = dict(context.invocation_metadata())
    context.send_initial_metadata((("x-seen-client", metadata.get("x-client", "")),))
    context.set_trailing_metadata((("x-trailer", "unary-done"),))
    return b"echo:" + request


def count(request, context):
    # Server streaming: one message now, the rest after a pause, so a proxy that buffers the
    # stream shows as a late first message.
    n = int(request.decode())
    for i in range(n):
        yield f"msg-{i}".encode()
        if i == 0:
            time.sleep(1.0)
    context.set_trailing_metadata((("x-count", str(n)),))


def big(request, context):
    return bytes(i % 251 for i in range(int(request.decode())))


def total(request_iterator, context):
    # Client streaming: the sum of the lengths of everything sent.
    return str(sum(len(m) for m in request_iterator)).encode()


def chat(request_iterator, context):
    # Bidirectional: each message answered before the next is read.
    for m in request_iterator:
        yield b"re:" + m


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())


def serve():
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Big": grpc.unary_unary_rpc_method_handler(big),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(addr, ca, name):
    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = OPTIONS + [
        ("grpc.ssl_target_name_override", name),
        ("grpc.default_authority", name),
    ]
    out = {}
    with grpc.secure_channel(addr, creds, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        method = lambda kind, m: getattr(channel, kind)(f"/{SERVICE}/{m}")

        reply, c = method("unary_unary", "Unary").with_call(
            b"hello", metadata=(("x-client", "rust-test"),), timeout=20
        )
        out["unary"] = {
            "reply": reply.decode(),
            "code": c.code().name,
            "initial": dict(c.initial_metadata()).get("x-seen-client"),
            "trailing": dict(c.trailing_metadata()).get("x-trailer"),
        }

        start = time.monotonic()
        stream = method("unary_stream", "Count")(b"5", timeout=20)
        messages, arrivals = [], []
        for m in stream:
            messages.append(m.decode())
            arrivals.append(time.monotonic() - start)
        out["count"] = {
            "messages": messages,
            "first_at": arrivals[0] if arrivals else None,
            "last_at": arrivals[-1] if arrivals else None,
            "code": stream.code().name,
            "trailing": dict(stream.trailing_metadata()).get("x-count"),
        }

        size = 4 * 1024 * 1024
        reply = method("unary_unary", "Big")(str(size).encode(), timeout=30)
        out["big"] = {
            "len": len(reply),
            "intact": reply == bytes(i % 251 for i in range(size)),
        }

        chunks = [b"x" * 65536 for _ in range(64)]
        reply = method("stream_unary", "Total")(iter(chunks), timeout=30)
        out["total"] = int(reply.decode())

        replies = method("stream_stream", "Chat")(
            iter([f"m{i}".encode() for i in range(100)]), timeout=30
        )
        got = [r.decode() for r in replies]
        out["chat"] = {"count": len(got), "first": got[0], "last": got[-1]}

        try:
            method("unary_unary", "Fail")(b"thing-7", timeout=20)
            out["fail"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["fail"] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve()
    elif sys.argv[1:2] == ["call"] and len(sys.argv) == 5:
        call(*sys.argv[2:5])
    else:
        sys.exit(__doc__)
