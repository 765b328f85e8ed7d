"""One role of a cell of the interoperability matrix (crates/broker/tests/interop_matrix.rs).

Usage: ``python3 matrix.py HOST PORT VERSION ROLE ARGS...`` (VERSION is ``v311`` or ``v5``):

- ``sub TOPIC QOS``: subscribes, prints ``ready|GRANTED_QOS`` once the SUBACK is in, then one
  line ``topic|qos|retain|payload`` per message received (retain is 0 or 1), until killed.
- ``pub TOPIC QOS RETAIN PAYLOAD``: publishes (RETAIN is 0 or 1), waits until the QoS flow is
  complete, sends DISCONNECT and waits for the broker to close; prints ``ok``.
- ``will TOPIC QOS PAYLOAD``: connects with that will (not retained), prints ``ready`` once
  the CONNACK is in, then idles until the test kills the process (SIGKILL: the socket
  closes without DISCONNECT).

The checks are made by the Rust side, the same for every client kind; this script only fails
(exit 1, reason on stderr) when the broker refuses something or a wait runs out. Every wait
is bounded (``interop.WAIT``), and a watchdog ends the process after ``interop.DEADLINE``.
"""

import faulthandler
import os
import sys
import time
import traceback

from interop import DEADLINE, Context, Failure, Peer


def name(role):
    """A client id unique to this process (``Peer`` appends the version)."""
    return f"matrix-{role}-{os.getpid()}"


def sub(ctx, topic, qos):
    peer = Peer(ctx, f"{name('sub')}-{ctx.version}")
    peer.connect()
    granted = peer.subscribe(topic, int(qos))
    print(f"ready|{granted}", flush=True)
    while True:
        m = peer.next_message("a message (the test kills this subscriber when done)",
                              timeout=DEADLINE)
        print(f"{m.topic}|{m.qos}|{int(m.retain)}|{m.payload.decode()}", flush=True)


def pub(ctx, topic, qos, retain, payload):
    check(retain in ("0", "1"), f"RETAIN must be 0 or 1, not {retain!r}")
    peer = Peer(ctx, f"{name('pub')}-{ctx.version}")
    peer.connect()
    reason = peer.publish(topic, payload, qos=int(qos), retain=retain == "1")
    if ctx.v5 and int(qos) > 0:
        check(not reason.is_failure, f"publish refused: {reason}")
    peer.disconnect()
    print("ok", flush=True)


def will(ctx, topic, qos, payload):
    peer = Peer(ctx, f"{name('will')}-{ctx.version}",
                will={"topic": topic, "payload": payload, "qos": int(qos), "retain": False})
    peer.connect()
    print("ready", flush=True)
    time.sleep(DEADLINE)
    raise Failure("the will owner was not killed")


def check(condition, message):
    if not condition:
        raise Failure(message)


ROLES = {"sub": (sub, 2), "pub": (pub, 4), "will": (will, 3)}


def main():
    faulthandler.dump_traceback_later(DEADLINE, exit=True)
    argv = sys.argv[1:]
    if len(argv) < 4 or argv[2] not in ("v311", "v5") or argv[3] not in ROLES \
            or len(argv) != 4 + ROLES[argv[3]][1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    host, port, version, role, rest = argv[0], int(argv[1]), argv[2], argv[3], argv[4:]
    ctx = Context(host, port, version)
    try:
        ROLES[role][0](ctx, *rest)
    except Failure as e:
        print(f"FAIL [{version} {role}]: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        print(f"FAIL [{version} {role}]: unexpected error", file=sys.stderr)
        sys.exit(1)
    sys.stdout.flush()
    faulthandler.cancel_dump_traceback_later()
    # Do not wait for paho's network threads.
    os._exit(0)


main()
