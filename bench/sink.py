"""Upload sink for the benchmarks: an HTTP/1.1 server that reads each request body
(Content-Length or chunked) into a reused 1 MiB buffer and answers 200 with its length.

Usage: python3 bench/sink.py PORT
"""

import socket
import socketserver
import sys

BUF = 1 << 20


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = sock.makefile("rb", buffering=BUF)
        buf = bytearray(BUF)
        view = memoryview(buf)
        while True:
            line = f.readline(65536)
            if not line:
                return
            headers = {}
            while True:
                h = f.readline(65536)
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            total = 0
            if "content-length" in headers:
                left = int(headers["content-length"])
                while left:
                    n = f.readinto(view[: min(left, BUF)])
                    if not n:
                        return
                    left -= n
                    total += n
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int(f.readline(1024).split(b";")[0], 16)
                    if size == 0:
                        f.readline(1024)
                        break
                    left = size
                    while left:
                        n = f.readinto(view[: min(left, BUF)])
                        if not n:
                            return
                        left -= n
                    total += size
                    f.readline(1024)
            body = str(total).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
