#!/usr/bin/env python3
"""An echo worker for a ringworker `pool` handler (docs/HANDLER_PROTOCOL.md).

Reads TASK frames on the descriptor named by RINGWORKER_HANDLER_FD and
answers each with a RESULT holding its payload; exits at end of file.
stdout and stderr are free for logs: the protocol never goes through them.
"""
import os
import socket
import struct

sock = socket.socket(fileno=int(os.environ.get("RINGWORKER_HANDLER_FD", "3")))
stream = sock.makefile("rb")

while len(head := stream.read(4)) == 4:
    frame = stream.read(struct.unpack(">I", head)[0])
    kind, task_id, deadline_ms = struct.unpack(">BQI", frame[:13])
    if kind != 0x01:
        raise SystemExit(f"unexpected frame kind {kind:#04x}")
    answer = struct.pack(">BQ", 0x02, task_id) + frame[13:]  # RESULT: the payload back
    sock.sendall(struct.pack(">I", len(answer)) + answer)
