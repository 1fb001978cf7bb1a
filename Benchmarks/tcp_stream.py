#!/usr/bin/env python3
"""One plain TCP stream carrying a file, with a chosen congestion control: the single-stream baseline of
bench-transfer (the sender uses sendfile, so it costs little CPU; the receiver writes what it reads).

    tcp_stream.py recv --listen 10.77.0.2:5301 --out FILE|- [--cc cubic]
    tcp_stream.py send FILE|- --to 10.77.0.2:5301 [--cc cubic]

`-` is standard input or output (a pipe from or to a compressor, e.g. the `zstd -3 | TCP` baseline).

The sender shuts down its side after the last byte and waits until the receiver closes, so it exits only
once every byte has reached the receiving application. Each side prints one JSON line.
"""

import argparse
import json
import os
import socket
import sys
import time


def address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def set_congestion_control(sock, name):
    if name:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())


def congestion_control(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()


def receive(args):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    set_congestion_control(listener, args.cc)
    listener.bind(address(args.listen))
    listener.listen(1)
    connection, _ = listener.accept()
    listener.close()
    start = time.monotonic()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    received = 0
    with (os.fdopen(sys.stdout.fileno(), "wb", closefd=False) if args.out == "-" else open(args.out, "wb")) as out:
        while True:
            count = connection.recv_into(buffer)
            if count == 0:
                break
            out.write(view[:count])
            received += count
    seconds = time.monotonic() - start
    connection.close()
    print(json.dumps({"event": "done", "bytes": received, "seconds": seconds}), file=sys.stderr if args.out == "-" else sys.stdout)


def send(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    set_congestion_control(sock, args.cc)
    start = time.monotonic()
    sock.connect(address(args.to))
    if args.file == "-":
        sent = 0
        while True:
            block = sys.stdin.buffer.read1(1 << 20)
            if not block:
                break
            sock.sendall(block)
            sent += len(block)
    else:
        with open(args.file, "rb") as source:
            sent = sock.sendfile(source)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):  # the receiver closes after it has read everything
        pass
    seconds = time.monotonic() - start
    used = congestion_control(sock)
    sock.close()
    print(json.dumps({"event": "done", "bytes": sent, "seconds": seconds, "cc": used}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    recv_parser = commands.add_parser("recv")
    recv_parser.add_argument("--listen", required=True)
    recv_parser.add_argument("--out", required=True)
    recv_parser.add_argument("--cc")
    send_parser = commands.add_parser("send")
    send_parser.add_argument("file")
    send_parser.add_argument("--to", required=True)
    send_parser.add_argument("--cc")
    args = parser.parse_args()
    try:
        receive(args) if args.command == "recv" else send(args)
    except OSError as error:
        sys.exit(f"tcp_stream {args.command}: {error}")


if __name__ == "__main__":
    main()
