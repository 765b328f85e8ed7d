"""A subscriber that stops reading does not hold up anyone (3.1.1 and 5.0).

One subscriber connects, subscribes and never reads its socket again. A publisher sends
3 MB of QoS 1 messages that also match it: every PUBACK still comes and another subscriber
gets every message in order (bounded queues: a slow subscriber never blocks a publisher or
other subscribers; see ARCHITECTURE.md).
"""

import time

from interop import WAIT, check, check_eq, run

COUNT = 400
PAYLOAD = 8 * 1024


def scenario(ctx):
    stuck = ctx.peer("stuck", threaded=False)
    rc, mid = stuck.client.subscribe("slow/#", 1)
    stuck.pump_until(lambda: mid in stuck.subacks, "SUBACK")
    # From here on nobody reads the stuck client's socket.

    pub, fast = ctx.peer("pub"), ctx.peer("fast")
    fast.subscribe("slow/#", 1)
    started = time.monotonic()
    infos = [pub.client.publish("slow/t", f"{i:06d}".encode() + b"." * PAYLOAD, qos=1)
             for i in range(COUNT)]
    for info in infos:
        info.wait_for_publish(max(0.1, started + 3 * WAIT - time.monotonic()))
        check(info.is_published(), "PUBACKs stopped coming while a subscriber is stuck")
    for i in range(COUNT):
        m = fast.next_message(f"message {i} on the reading subscriber")
        check_eq(m.payload[:6], f"{i:06d}".encode(), "order on the reading subscriber")


run(scenario)
