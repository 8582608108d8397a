#!/usr/bin/env python3
"""wait_turn.py RUNTIME_DIR SIDECAR SENT_FILE: asks the keeper for a turn
(KEEPER_WAIT_TURN) as a shim does after KEEPER_YIELD, creates SENT_FILE once
the request is sent, and prints the answer's status name (HELD, DONE ...), or
"no answer" if none came within 5 s.  A lock call sends this request
only right after a yield; the test sends it at a moment of its choosing.  The wire format is read from
src/core/keeper_proto.h."""
import os
import re
import socket
import struct
import sys

top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
proto = open(os.path.join(top, "src/core/keeper_proto.h")).read()
config = open(os.path.join(top, "src/core/config.h")).read()
version = int(re.search(r"#define KEEPER_PROTO_VERSION (\d+)", proto).group(1))
prefix_max = int(re.search(r"#define CONFIG_PREFIX_MAX (\d+)", config).group(1))
statuses = re.search(r"enum keeper_status \{(.*?)\};", proto, re.S).group(1)
names = re.findall(r"^\s*KEEPER_([A-Z_]+)", statuses, re.M)  # from 1 on, in order

rundir, sidecar, sent = sys.argv[1:4]
ms = 1000000
# The keeper serves each share (device) in a thread of its own: the request
# names the file's, as the shim's do (the sidecar's directory is on it).
dev = os.stat(os.path.dirname(sidecar)).st_dev
# version op nonblocking pid dev ino verify retry timeout lease foreign linger
# suffix_len grant_table prefix sidecar
request = struct.pack("=IIIiQQqqqqqqQQ%ds%ds" % (prefix_max, os.pathconf("/", "PC_PATH_MAX")),
                      version, 4, 0, os.getpid(), dev, 0, 10 * ms, 10 * ms, -1, 30000 * ms, -1, 0,
                      0, 0, b"", sidecar.encode())
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(os.path.join(rundir, "keeper.sock"))
s.send(request)
open(sent, "w").close()
s.settimeout(5)
try:
    status = names.index("WAITING") + 1
    while status == names.index("WAITING") + 1:  # "still waiting" is not an answer
        status = struct.unpack("=Ii", s.recv(4096)[:8])[0]
    print(names[status - 1] if 0 < status <= len(names) else "status %d" % status)
except socket.timeout:
    print("no answer")
