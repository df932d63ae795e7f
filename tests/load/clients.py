#!/usr/bin/env python3
"""Load clients for tests/integration/load.rs, in a process of their own so that the
server's process holds only its own ends of the connections.

    clients.py TCP_HOST TCP_PORT UDP_HOST UDP_PORT N

Opens N TCP connections (each sends b"hi" and reads the echo) and prints
"TCP READY N"; on the line "udp" from stdin opens N UDP sockets (each gets an echo,
retried a bounded number of times) and prints "UDP READY N"; on "quit" or end of input
it exits. Every socket operation has a timeout.
"""
import socket
import sys


def main():
    th, tp, uh, up, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    conns = []
    for _ in range(n):
        s = socket.create_connection((th, tp), timeout=10)
        s.sendall(b"hi")
        got = b""
        while len(got) < 2:
            chunk = s.recv(2 - len(got))
            if not chunk:
                raise SystemExit("tcp echo ended early")
            got += chunk
        assert got == b"hi", got
        conns.append(s)
    print(f"TCP READY {len(conns)}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "udp":
            socks = []
            for _ in range(n):
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.settimeout(0.5)
                u.connect((uh, up))
                for _attempt in range(20):
                    u.send(b"peer")
                    try:
                        if u.recv(16) == b"peer":
                            break
                    except socket.timeout:
                        continue
                else:
                    raise SystemExit("a udp peer got no echo")
                socks.append(u)
            print(f"UDP READY {len(socks)}", flush=True)
        elif cmd == "close-tcp":
            for s in conns:
                s.close()
            conns = []
            print("TCP CLOSED", flush=True)
        elif cmd == "quit":
            break


if __name__ == "__main__":
    main()
