"""Redelivery of unacknowledged messages on session resumption (3.1.1 and 5.0).

The subscriber (manual acknowledgement) gets a QoS 1 PUBLISH it never acknowledges and a
QoS 2 message whose PUBREL it never answers with PUBCOMP, then disconnects. On reconnecting
with the session, the broker resends the QoS 1 PUBLISH with the same packet id and DUP 1, and
the PUBREL (not the PUBLISH) for the QoS 2 one [MQTT-4.4.0-1] [MQTT-3.3.1-1]; nothing else.
"""

from interop import check_eq, run


def scenario(ctx):
    pub = ctx.peer("pub")
    expiry = 60 if ctx.v5 else None
    sub = ctx.peer("redeliver", clean=False, session_expiry=expiry, manual_ack=True)
    sub.subscribe("redo/q1", 1)
    sub.subscribe("redo/q2", 2)

    pub.publish("redo/q1", "never acknowledged", qos=1)
    m1 = sub.expect("redo/q1", "never acknowledged", qos=1)
    check_eq(m1.dup, False, "DUP of the first delivery")
    pub.publish("redo/q2", "never completed", qos=2)
    m2 = sub.expect("redo/q2", "never completed", qos=2)  # delivered by paho on PUBREL
    sub.disconnect()

    back = ctx.peer("redeliver", clean=False, session_expiry=expiry)
    check_eq(back.session_present, True, "Session Present")
    r = back.expect("redo/q1", "never acknowledged", qos=1, what="the resent QoS 1 message")
    check_eq(r.dup, True, "DUP of the resent QoS 1 PUBLISH")
    check_eq(r.mid, m1.mid, "packet id of the resent QoS 1 PUBLISH")
    back._wait(lambda: back.saw_log(f"Received PUBREL (Mid: {m2.mid})"),
               f"the resent PUBREL for packet id {m2.mid}")
    back.expect_marker(pub, "redo/q1", "the resent messages (no duplicate QoS 2 PUBLISH)")


run(scenario)
