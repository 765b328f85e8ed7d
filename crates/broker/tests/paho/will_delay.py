"""Will Delay Interval (5.0 only; waits about 1.3 s).

With Will Delay 1 s the will of an abruptly closed connection is published after the delay,
not at once; with Will Delay 1 s and a reconnection (same id, Clean Start 0) within the delay
it is not published at all [MQTT-3.1.3-9] (5.0 §3.1.3.2.2).
"""

import time

from interop import Properties, PacketTypes, check, run


def will(payload, delay):
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = delay
    return {"topic": "wd/watch", "payload": payload, "qos": 1, "properties": props}


def scenario(ctx):
    watcher, other = ctx.peer("watcher"), ctx.peer("other")
    watcher.subscribe("wd/watch", 1)

    comes_back = ctx.peer("comes-back", threaded=False, clean=False, session_expiry=30,
                          will=will("must not be published", 1))
    comes_back.close_abruptly()
    comes_back_closed = time.monotonic()
    again = ctx.peer("comes-back", clean=False, session_expiry=30)

    delayed = ctx.peer("delayed", threaded=False, session_expiry=30,
                       will=will("published after 1 s", 1))
    closed_at = time.monotonic()
    delayed.close_abruptly()
    watcher.expect_marker(other, "wd/watch", "an abrupt close with Will Delay 1 s (not yet)")
    m = watcher.next_message("the delayed will")
    elapsed = time.monotonic() - closed_at
    check(m.payload == b"published after 1 s", f"unexpected {m!r} (a will that must not be)")
    check(elapsed >= 0.9, f"delayed will published after {elapsed:.2f}s, before its 1 s delay")
    again.disconnect()
    # Let comes-back's 1 s will delay run out: a will wrongly kept would be published by now.
    time.sleep(max(0.0, comes_back_closed + 1.3 - time.monotonic()))
    watcher.expect_marker(other, "wd/watch", "the reconnection within the will delay")


run(scenario, versions=("v5",))
