"""Keep alive (3.1.1 and 5.0; waits about 1.5 s).

A client with Keep Alive 1 s that goes silent is disconnected by the broker after 1.5 times
the keep-alive [MQTT-3.1.2-24 (3.1.1)] [MQTT-3.1.2-22 (5.0)], not before, and its will is
published; 5.0: it first gets DISCONNECT 0x8D Keep Alive timeout. A client with the same
Keep Alive that sends PINGREQ (paho, driven here every 50 ms) stays connected.
"""

import queue
import time

from interop import WAIT, Failure, check, check_eq, run


def scenario(ctx):
    watcher = ctx.peer("watcher")
    watcher.subscribe("ka/will", 1)
    alive = ctx.peer("alive", threaded=False, keepalive=1)

    started = time.monotonic()
    silent = ctx.peer("silent", threaded=False, keepalive=1,
                      will={"topic": "ka/will", "payload": "silent one timed out", "qos": 1})
    # Drive the live client's loop (it sends PINGREQ each second) until the will comes.
    m = None
    while m is None:
        if time.monotonic() - started > WAIT:
            raise Failure(f"no will within {WAIT}s: the silent client was not disconnected")
        alive.client.loop(timeout=0.05)
        try:
            m = watcher.messages.get_nowait()
        except queue.Empty:
            pass
    elapsed = time.monotonic() - started
    check_eq((m.topic, m.payload), ("ka/will", b"silent one timed out"), "will message")
    check(elapsed >= 1.0, f"disconnected after {elapsed:.2f}s, before 1.5 x keep-alive")
    check(alive.saw_log("Sending PINGREQ"), "the live client never sent PINGREQ")
    check(alive.disconnected is None,
          f"the client sending PINGREQ was disconnected: {alive.disconnected}")
    if ctx.v5:
        silent.pump_until(lambda: silent.disconnected is not None, "the DISCONNECT")
        check_eq(silent.disconnected.value, 0x8D, "DISCONNECT reason")


run(scenario)
