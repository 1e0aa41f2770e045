#!/usr/bin/env python3
"""Write the hand-made seed inputs of the session, handshake, manager and
tls targets into fuzz/corpus/<target>/<sha1>. Each seed is a short program
in the byte code its target parses (src/fuzzing/<target>.rs): valid sessions first,
then edge cases. Run from anywhere; existing files are kept."""

import hashlib
import os
import random
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- session: [config, peer, ops...] --------------------------------------
# config: bits 0-2 max_in_flight-1, bits 3-4 max_body choice (128, 300, 4096,
#         1 MiB), bit 5 jobs answered during the final stop, bit 6 the
#         manager's EOF during the final stop, bit 7 no WELCOME
# peer: bits 0-1 WELCOME max_body choice, bits 2-3 heartbeat choice
# ops: 0 raw(n, seed, bytes) | 1-4 frames(count-1, frame..., seed, seed)
#      5/6 advance(ms) | 7 to deadline | 8 flush (the manager reads) |
#      9 jobs done | 10 stop | 11 eof
# frame: kind(0-8 task, 9-10 ping, 11 pong, 12 drain, 13 goodbye, 14 error,
#        15 odd), flags, id, then for a task: handler index
#        (echo crc32c sha256 sink sleep nosuch ext), len, fill or sleep ms;
#        ext is a declared handler (its jobs are answered by op 9, each as
#        its first payload byte % 4 says); sink with len >= 0xf0 is a large
#        TASK of 60 + (len - 0xf0) kB, twice per program at most
H = {"echo": 0, "crc32c": 1, "sha256": 2, "sink": 3, "sleep": 4, "nosuch": 5, "ext": 6}


def task(handler, length=10, fill=7, ack=False, id=1, ms=5):
    b = [0, 1 if ack else 0, id, H[handler], length]
    if handler == "sleep" and length % 4 != 3:
        b.append(ms)
    else:
        b.append(fill)
    return b


def frames(*fs, seeds=(0x85, 0x85)):
    out = [1, len(fs) - 1]
    for f in fs:
        out += f
    return out + list(seeds)


def ping(id=3):
    return [9, 0, id]


def drain_frame():
    return [12, 0, 0]


def goodbye_frame():
    return [13, 0, 0]


def error_frame():
    return [14, 0, 0]


def odd(which=0, id=1):
    return [15, 0, id, which]


FLUSH, DEADLINE, JOBS, DRAIN, EOF = [8], [7], [9], [10], [11]


def adv(ms):
    return [5, ms]


def raw(bs, seed=0x85):
    return [0, len(bs), seed] + list(bs)


session = []
for mif in (0, 3, 7):
    for body in (0, 1, 2, 3):
        cfg = mif | (body << 3)
        session.append([cfg, 2] + frames(task("echo", id=1), task("crc32c", id=2, ack=True),
                                         task("sha256", id=3)) + FLUSH + DRAIN + FLUSH + FLUSH)
for split in (0x00, 0x01, 0x40, 0x41, 0x7f, 0x80, 0x81, 0xc0):
    session.append([3, 6] + frames(task("echo", 200, id=1), task("sleep", id=2, ms=20),
                                   task("sink", id=3), ping(), seeds=(split, split ^ 0x41))
                   + adv(30) + FLUSH + EOF + FLUSH + FLUSH)
# max_in_flight 1 with sleeps: tasks held back, then released by the clock
session.append([0, 2] + frames(task("sleep", id=1, ms=10), task("echo", id=2),
                               task("sleep", id=3, ms=10), task("echo", id=4))
               + adv(5) + FLUSH + adv(10) + FLUSH + DEADLINE + FLUSH + adv(20) + FLUSH)
# duplicate ids, unknown handler, bad sleep payload, too large results
session.append([1, 0] + frames(task("sleep", id=5, ms=50), task("echo", id=5)) + FLUSH)
session.append([2, 0] + frames(task("nosuch", id=1), task("sleep", 3, id=2)) + FLUSH)
session.append([0x1a, 0] + frames(task("echo", 255, id=1), task("echo", 90, id=2)) + FLUSH)
# drains: the manager's, ours, EOF with tasks running
session.append([3, 2] + frames(task("sleep", id=1, ms=30), drain_frame(), task("echo", id=2))
               + FLUSH + adv(40) + FLUSH + FLUSH)
session.append([3, 2] + frames(task("sleep", id=1, ms=30)) + DRAIN + frames(task("echo", id=2))
               + adv(40) + FLUSH + FLUSH)
session.append([3, 2] + frames(task("sleep", id=1, ms=60)) + EOF + adv(255) + FLUSH
               + DEADLINE + FLUSH + adv(255) + FLUSH)
# heartbeats: silence until the manager is presumed gone
session.append([3, 4] + FLUSH + adv(25) + FLUSH + adv(25) + adv(25) + adv(25) + FLUSH)
session.append([3, 8] + DEADLINE + FLUSH + DEADLINE + DEADLINE + DEADLINE + FLUSH)
# no WELCOME: a raw WELCOME, bad ones, a TASK before WELCOME, handshake timeout
welcome = b'{"protocol":1,"manager":"raw","max_body":4096,"heartbeat_ms":0}'
wf = struct.pack(">IBBHQ", 12 + len(welcome), 2, 0, 0, 0) + welcome
session.append([0x83, 0] + raw(wf, 0x01) + frames(task("echo", id=9)) + FLUSH)
session.append([0x83, 0] + raw(wf[:20], 0x00) + raw(wf[20:], 0x00) + FLUSH)
session.append([0x83, 0] + frames(task("echo", id=9)) + FLUSH)
session.append([0x83, 0] + adv(255) + adv(255) + adv(255) + adv(255) + adv(255) + FLUSH)
# peer GOODBYE / ERROR / frames a worker never receives / garbage
session.append([3, 2] + frames(task("echo"), goodbye_frame(), task("echo", id=2)) + FLUSH)
session.append([3, 2] + frames(task("sleep", id=1), error_frame()) + adv(10) + FLUSH)
for w in range(3):
    session.append([3, 2] + frames(odd(w)) + FLUSH)
session.append([3, 2] + raw(b"\x00\x00\x00\x05garbage") + FLUSH)
session.append([3, 2] + raw(b"\xff\xff\xff\xff\x10\x00\x00\x00") + FLUSH)
# a long mixed stream read in tiny pieces, with output piling up unflushed
rnd = random.Random(7)
for n in range(6):
    prog = [rnd.randrange(0, 0x20), rnd.randrange(0, 16)]
    for _ in range(30):
        k = rnd.randrange(10)
        if k < 6:
            h = rnd.choice(list(H))
            prog += frames(task(h, rnd.randrange(0, 256), rnd.randrange(256),
                                rnd.random() < 0.3, rnd.randrange(24), rnd.randrange(40)),
                           seeds=(rnd.randrange(256), rnd.randrange(256)))
        elif k < 8:
            prog += adv(rnd.randrange(60))
        else:
            prog += FLUSH
    session.append(prog + DRAIN + FLUSH + adv(100) + FLUSH + FLUSH)
# large TASKs: the rest of each received straight into the frame buffer
for split in (0x00, 0x01, 0x41, 0x81, 0xc0):
    session.append([0x1b, 7] + frames(task("sink", 0xf6, id=1), task("echo", id=2),
                                      seeds=(split, split ^ 0x40))
                   + FLUSH + adv(30) + FLUSH)
session.append([0x1b, 3] + frames(task("sink", 0xff, id=1), task("sink", 0xf0, id=2),
                                  task("sink", 0xf8, id=3), seeds=(0x01, 0x03)) + FLUSH)
# the start of a large TASK, then a heartbeat: the wait-all receive of its
# rest is collected before the deadline is judged
big = struct.pack(">IBBHQ", 12 + 100000, 0x10, 0, 0, 1) + b"\x04sink" + bytes(20)
for hb in (4, 8):
    session.append([0x1b, 3 | hb] + raw(big, 0x41) + adv(25) + FLUSH + adv(25) + FLUSH
                   + DEADLINE + DEADLINE + FLUSH)
# a declared handler: jobs answered (echoed, fourfold, failed, after a stale
# answer), held, answered during the stop or abandoned by it
for cfg in (0x03, 0x23, 0x43, 0x63):
    session.append([cfg, 2] + frames(task("ext", 8, 0, id=1), task("ext", 8, 1, ack=True, id=2),
                                     task("ext", 8, 2, id=3), task("ext", 8, 3, id=4))
                   + JOBS + FLUSH + frames(task("ext", 4, 0, id=5)) + FLUSH)
session.append([0x00, 0] + frames(task("ext", 200, 1, id=1), task("ext", 3, 0, id=2))
               + FLUSH + JOBS + FLUSH + JOBS + FLUSH)
# the connection ends (ERROR, EOF, a silent manager) and redials; a job of
# the old connection answered on the new one
session.append([0x03, 2] + frames(task("ext", 5, 0, id=1)) + FLUSH + frames(error_frame())
               + FLUSH + DEADLINE + DEADLINE + JOBS + frames(task("echo", id=2)) + FLUSH)
session.append([0x43, 2] + frames(task("echo", id=1)) + FLUSH + EOF + FLUSH + adv(255)
               + DEADLINE + FLUSH + DEADLINE + frames(task("echo", id=2)) + FLUSH)
session.append([0x23, 4] + FLUSH + DEADLINE + DEADLINE + DEADLINE + DEADLINE + FLUSH
               + DEADLINE + DEADLINE + frames(task("echo", id=3)) + FLUSH)
# a stop in the middle: the program goes on against a stopping agent
session.append([0x03, 2] + frames(task("sleep", id=1, ms=40), task("ext", 5, 0, id=2))
               + DRAIN + frames(task("echo", id=3)) + FLUSH + adv(50) + JOBS + FLUSH + EOF + FLUSH)
# a job answered late in the drain: the linger after GOODBYE ends with it
session.append([0x03, 2] + frames(task("ext", 5, 0, id=1)) + FLUSH + DRAIN + adv(255) * 6
               + JOBS + FLUSH + FLUSH + adv(255) * 4 + FLUSH)

for s in session:
    write("session", bytes(s))

# ---- handshake: [mode, ...picked fields..., split seed] --------------------
# mode 0 WELCOME first, 1 ERROR first, 2 WELCOME then WELCOME, 3 WELCOME then
# ERROR; the rest is read by welcome_body / error_body (src/fuzzing.rs).
rnd = random.Random(11)
hs = []
hs.append([0, 0, 0, 1, 0, 1, 0, 4, 0, 0, 0x85])        # plain valid WELCOME
hs.append([0, 0, 0, 1, 0, 3, 0, 6, 0, 2, 0x00])        # max_body 63: refused
hs.append([0, 0, 1, 2, 0, 1, 0, 4, 0, 0, 0x41])        # protocol 2
hs.append([0, 0x80, 0, 1, 0, 1, 0, 4, 0, 0, 0, 0, 0x85])  # damaged body
hs.append([0, 0x01, 0, 0, 1, 0, 4, 0, 0, 0x85])        # protocol missing
hs.append([0, 0x20, 0, 1, 7, 0, 4, 0, 0, 0x85])        # duplicate key
hs.append([0, 0x10, 0, 1, 8, 0, 4, 0, 0, 0xc0])        # unknown field, bidi
hs.append([1, 0, 1, 1, 0x85])                          # ERROR, plain
hs.append([1, 0, 7, 8, 0x01])                          # ERROR with escapes
hs.append([1, 0, 9, 0x40, 0, 9, 0x10, 0, 0x85])        # long code and message
hs.append([1, 0x80, 1, 1, 0, 0, 0x85])                 # damaged ERROR
hs.append([2, 0, 0, 1, 0, 1, 0, 4, 0, 0, 0x85])        # a second WELCOME
hs.append([3, 0, 1, 1, 0x85])                          # ERROR after WELCOME
hs.append([1, 0, 3, 1, 0x85])                          # refused: unauthorized
hs.append([1, 1, 4, 2, 0x41])                          # refused: unsupported_version
hs.append([3, 0, 3, 1, 0x85])                          # unauthorized after WELCOME
for _ in range(40):
    hs.append([rnd.randrange(4)] + [rnd.randrange(256) for _ in range(rnd.randrange(4, 40))])
for h in hs:
    write("handshake", bytes(h))

# ---- manager: [config, ops...] --------------------------------------------
# config: bit 0 token required, bits 1-2 max_body, bits 4-7 heartbeat
# ops: 0 raw | 1-2 HELLO picked by hello_body | 3-5 worker frames |
#      6-7 send_task(id, handler, len16, ack) | 8 ping | 9 drain |
#      10 goodbye | 11 consume(n16)
def hello(token_choice=1, damage=False):
    # flags, then for each of 4 numbers: choice byte 0 (plain 1)
    b = [1, 0x80 if damage else 0, 0, 0, 0, 0]
    b += [1, 2]                    # worker, runtime: "manager-1"
    b += [0, token_choice]         # handlers ["echo","sleep"], token choice
    if damage:
        b += [0, 0, 0]
    return b + [0x85]


def wframes(*fs, seed=0x85):
    return [3, len(fs) - 1] + [x for f in fs for x in f] + [seed]


def result(id, n=10, failed=False):
    return [0, id, n, 0, 1 if failed else 0]


def send(id, handler=0, n=100, ack=0):
    return [6, id, handler, n >> 8, n & 0xff, ack]


mg = []
for cfg in (0, 1, 2, 4, 6, 0x12, 0x13):
    mg.append([cfg] + hello(1) + send(1) + send(2, ack=1) + wframes(result(1), [4, 2], result(2, 4))
              + [8, 9] + wframes([8, 0, 0]) + [11, 0, 200] + [10])
mg.append([1] + hello(0) + send(1))                 # token missing
mg.append([1] + hello(2) + send(1))                 # token wrong
mg.append([0] + hello(4) + send(1))                 # token of the wrong type
mg.append([0] + hello(1, True) + send(1))           # damaged HELLO
mg.append([0] + wframes(result(1)) + send(1))       # RESULT before HELLO
mg.append([0] + hello() + send(1, 2) + send(2, 3) + send(3, 5) + send(4, 0, 0xffff))
mg.append([0] + hello() + wframes([9, 0, 1, 1, 0x85, 0]) + send(1))   # worker ERROR
mg.append([0] + hello() + wframes([9, 0, 1, 1, 0x85, 2]) + send(1))   # worker TASK
mg.append([0] + hello() + [0, 8, 0x00] + list(b"\x00\x00\x00\x0c\x99\x00\x00\x00"))
mg.append([2] + hello() + wframes(result(5, 255), result(6, 200)))      # RESULT over 64
for _ in range(30):
    mg.append([rnd.randrange(256)] + hello() + [rnd.randrange(256) for _ in range(rnd.randrange(10, 80))])
for m in mg:
    write("manager", bytes(m))

# ---- tls: [heartbeat, ops...] ----------------------------------------------
# ops: 0-1 worker writes / manager reads (damage if next byte % 4 == 0) |
#      2-3 manager tasks | 4-6 worker reads (seed, per chunk: damage if % 8
#      == 0) | 7 clock | 8 junk | 9 close_notify or EOF
W = [0, 1]          # worker writes, no damage
R = [4, 0xc0, 1]    # worker reads in one piece, no damage
def tasks(n=2, ln=100):
    return [2, n - 1] + [x for _ in range(n) for x in (ln >> 8, ln & 0xff, 7)]

handshake_ops = W + R + W + R + W + R + W
tl = []
tl.append([0] + handshake_ops + tasks() + R + W + R + W)
tl.append([1] + handshake_ops + tasks(4, 1500) + R + W + [7, 50] + R + W + [9, 0] + R + W + R)
tl.append([0] + handshake_ops + tasks() + [9, 1] + W)
for seed in (0x00, 0x05, 0x41, 0x80):
    tl.append([0] + W + [4, seed, 1] * 4 + W + [4, seed, 1] + W + R + tasks(3, 700) + [4, seed] + [1] * 40 + W)
for kind in range(5):
    # damage in the worker's reads: flip, insert, cut, duplicate, truncate
    tl.append([0] + handshake_ops + tasks() + [4, 0xc0, 0, 0, 30, kind, 3, 5] + W + R + W)
    tl.append([0] + W + [4, 0xc0, 0, 0, 60, kind, 1, 9] + W + R + W)
    # damage in what the manager reads
    tl.append([0] + [0, 0, 0, 40, kind, 2, 7] + R + W + R)
    tl.append([0] + handshake_ops + tasks() + R + [0, 0, 0, 10, kind, 4, 1] + R + W)
tl.append([0] + handshake_ops + [8, 20] + list(range(20)) + W + R)
tl.append([0] + [8, 6, 0x14, 3, 3, 0, 1, 1] + handshake_ops)   # a CCS record first
tl.append([0] + [9, 1])                                         # EOF before anything
tl.append([0] + W + [9, 1] + W)                                 # EOF mid-handshake
tl.append([0] + handshake_ops + [7, 255] * 12 + W)              # handshake timeout
for _ in range(20):
    tl.append([rnd.randrange(2)] + handshake_ops + [rnd.randrange(256) for _ in range(rnd.randrange(10, 60))])
for t in tl:
    write("tls", bytes(t))
