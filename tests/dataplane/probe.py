"""Runs INSIDE a devbox (as its unprivileged user, with /usr/bin/python3): one network probe.

Prints one line: ``OK <detail>`` or ``FAIL <reason>``. Usage (argv):
  resolve NAME                 -> OK ip,ip | FAIL <gai error>
  tcp HOST PORT                -> connect, send "ping", expect the echo
  http HOST PORT               -> GET /, print the body
  udp HOST PORT                -> send a datagram, expect the echo
  dns SERVER PORT NAME udp|tcp -> a raw DNS query to SERVER (not via resolv.conf)
  hold HOST PORT               -> open a TCP connection, echo once, then report every second
                                  whether the connection still echoes (for revocation tests)
  serve PORT                   -> a TCP echo server (every connection, every read) on PORT;
                                  prints "OK ready" once listening, then runs until killed
"""

import socket
import struct
import sys

TIMEOUT = 1.5


def main(argv):
    mode = argv[0]
    try:
        if mode == "resolve":
            infos = socket.getaddrinfo(argv[1], None, socket.AF_INET, socket.SOCK_STREAM)
            return "OK " + ",".join(sorted({i[4][0] for i in infos}))
        if mode == "serve":
            return serve(int(argv[1]))
        host, port = argv[1], int(argv[2])
        if mode == "tcp":
            with socket.create_connection((host, port), timeout=TIMEOUT) as s:
                s.sendall(b"ping")
                return "OK " + s.recv(100).decode()
        if mode == "http":
            with socket.create_connection((host, port), timeout=TIMEOUT) as s:
                s.sendall(f"GET /probe HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return "OK " + data.split(b"\r\n\r\n", 1)[1].decode().strip()
        if mode == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(TIMEOUT)
                s.sendto(b"ping", (host, port))
                return "OK " + s.recv(100).decode()
        if mode == "dns":
            query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
            query += b"".join(bytes([len(p)]) + p.encode() for p in argv[3].split(".")) + b"\0"
            query += struct.pack(">HH", 1, 1)
            if argv[4] == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(TIMEOUT)
                    s.sendto(query, (host, port))
                    reply = s.recv(4096)
            else:
                with socket.create_connection((host, port), timeout=TIMEOUT) as s:
                    s.sendall(struct.pack(">H", len(query)) + query)
                    reply = s.recv(4096)
            return f"OK rcode={reply[3] & 0xF if argv[4] == 'udp' else reply[5] & 0xF}"
        if mode == "hold":
            with socket.create_connection((host, port), timeout=TIMEOUT) as s:
                s.sendall(b"first")
                print("OK " + s.recv(100).decode(), flush=True)
                # Echo on every line the test sends on stdin; report each result.
                for line in sys.stdin:
                    try:
                        s.sendall(line.strip().encode())
                        got = s.recv(100).decode()
                        print(("OK " + got) if got else "FAIL closed", flush=True)
                    except OSError as exc:
                        print(f"FAIL {type(exc).__name__}", flush=True)
                return "OK done"
        return f"FAIL unknown mode {mode}"
    except OSError as exc:
        return f"FAIL {type(exc).__name__}: {exc}"


def serve(port):
    import threading

    def echo(conn):
        with conn:
            while data := conn.recv(100):
                conn.sendall(data)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen()
    print("OK ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    print(main(sys.argv[1:]), flush=True)
