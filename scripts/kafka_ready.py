#!/usr/bin/env python3
"""Waits until a Kafka broker really answers: an ApiVersions request (v0, which every broker
answers) and then a Metadata request (v4) whose answer names a broker at the address asked and
an active controller. An open port is not enough: a KRaft broker accepts connections before its
metadata has caught up, and clients started then get errors.

usage: kafka_ready.py HOST:PORT TIMEOUT_SECONDS [PID]
Exits 0 when ready; 1 on timeout, or at once when the process PID (the broker) has exited.
"""
import os
import socket
import struct
import sys
import time


def request(sock, api_key, version, correlation, body=b""):
    client = b"sensorcast-ready"
    header = struct.pack(">hhih", api_key, version, correlation, len(client)) + client
    message = header + body
    sock.sendall(struct.pack(">i", len(message)) + message)
    size = struct.unpack(">i", read_exact(sock, 4))[0]
    answer = read_exact(sock, size)
    (got,) = struct.unpack(">i", answer[:4])
    if got != correlation:
        raise ValueError(f"correlation id {got}, expected {correlation}")
    return answer[4:]


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return data


def read_string(buf, at):
    (n,) = struct.unpack(">h", buf[at : at + 2])
    at += 2
    if n < 0:
        return None, at
    return buf[at : at + n].decode(), at + n


def ready(host, port):
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.settimeout(5)
        answer = request(sock, 18, 0, 1)  # ApiVersions v0
        (error,) = struct.unpack(">h", answer[:2])
        if error != 0:
            return f"ApiVersions error {error}"
        # Metadata v4: no topics (empty array), no auto-creation.
        answer = request(sock, 3, 4, 2, struct.pack(">i?", 0, False))
        at = 4  # throttle_time_ms
        (brokers,) = struct.unpack(">i", answer[at : at + 4])
        at += 4
        found = False
        for _ in range(brokers):
            at += 4  # node_id
            broker_host, at = read_string(answer, at)
            (broker_port,) = struct.unpack(">i", answer[at : at + 4])
            at += 4
            _, at = read_string(answer, at)  # rack
            found |= broker_port == port
        _, at = read_string(answer, at)  # cluster_id
        (controller,) = struct.unpack(">i", answer[at : at + 4])
        if not found:
            return "metadata does not name this broker yet"
        if controller < 0:
            return "no active controller yet"
        return None


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    port = int(port)
    deadline = time.monotonic() + float(sys.argv[2])
    pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
    why = "no answer"
    while time.monotonic() < deadline:
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"kafka_ready: the broker (PID {pid}) exited", file=sys.stderr)
                return 1
        try:
            why = ready(host, port)
            if why is None:
                return 0
        except (OSError, ValueError, struct.error) as e:
            why = str(e) or type(e).__name__
        time.sleep(0.2)
    print(f"kafka_ready: {host}:{port} not ready after {sys.argv[2]} s: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
