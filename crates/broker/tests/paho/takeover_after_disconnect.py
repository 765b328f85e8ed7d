"""A DISCONNECT the broker has received must count even if a takeover follows (3.1.1, 5.0).

Client A (with a will) subscribes and stops reading, so the broker's writes to it block once
the TCP buffers are full (a flood of messages to its topic). A then sends DISCONNECT (normal,
reason 0x00) and keeps its socket open; right after, a new connection with A's client id
takes the session over. A's DISCONNECT arrived before the takeover, so A's will must be
discarded [MQTT-3.1.2-10] and must not be published.

Sagitta bug this pins: the connection task, blocked writing (or simply woken for both at
once), acts on the takeover signal without handling the DISCONNECT already received, and
publishes the will as for a broken connection. The same race shows for idle connections
under load (a quick disconnect/reconnect with the same client id publishes the will).
"""

import socket

from interop import run

FLOOD = 100           # messages of 64 KiB: far more than the TCP buffers can hold
PAYLOAD = b"f" * 65536


def scenario(ctx):
    watcher, other = ctx.peer("watcher"), ctx.peer("other")
    watcher.subscribe("tod/will", 1)

    a = ctx.peer("tod", threaded=False,
                 will={"topic": "tod/will", "payload": "A's will (must not be sent)", "qos": 1})
    sock = a.client.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rc, mid = a.client.subscribe("tod/flood", 0)
    a.pump_until(lambda: mid in a.subacks, "SUBACK")
    # From here on A reads nothing.

    for _ in range(FLOOD):
        other.client.publish("tod/flood", PAYLOAD, qos=0)
    other.publish("tod/flood", "last", qos=1)  # the broker has routed the whole flood

    sock.sendall(b"\xe0\x00")  # DISCONNECT, reason 0x00 (the socket stays open)
    ctx.peer("tod")            # takeover by a new connection with the same client id
    watcher.expect_marker(other, "tod/will",
                          "a normal DISCONNECT received before a session takeover")


run(scenario)
