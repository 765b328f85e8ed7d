"""Persistent sessions (3.1.1: Clean Session 0; 5.0: Clean Start 0 + Session Expiry 60 s).

A session survives its client's DISCONNECT: on reconnect CONNACK has Session Present 1
[MQTT-3.2.2-2], the subscriptions are still there (the client does not subscribe again) and
QoS 1 and 2 messages published while it was away are delivered [MQTT-3.1.2-4/5 (3.1.1)]
[MQTT-3.1.2-23 (5.0)], each exactly once, in order per QoS. A later clean
connection discards the session: Session Present 0 [MQTT-3.2.2-1] and nothing queued comes.
5.0: a DISCONNECT with Session Expiry Interval 0 ends the session (§3.14.2.2.2).
"""

from interop import PacketTypes, Properties, check_eq, run


def scenario(ctx):
    pub = ctx.peer("pub")
    expiry = 60 if ctx.v5 else None
    sub = ctx.peer("persistent", clean=False, session_expiry=expiry)
    check_eq(sub.session_present, False, "Session Present for a new session")
    sub.subscribe("persist/q1", 1)
    sub.subscribe("persist/q2", 2)
    sub.disconnect()

    sent = [("persist/q1", b"m1", 1), ("persist/q2", b"m2", 2), ("persist/q1", b"m3", 1),
            ("persist/q2", b"m4", 2)]
    for topic, payload, qos in sent:
        pub.publish(topic, payload, qos=qos)

    back = ctx.peer("persistent", clean=False, session_expiry=expiry)
    check_eq(back.session_present, True, "Session Present when resuming the session")
    got = [back.next_message(f"queued message {i + 1} of {len(sent)}") for i in range(len(sent))]
    got = [(m.topic, m.payload, m.qos) for m in got]
    check_eq(sorted(got), sorted(sent), "messages queued while offline")
    for qos in (1, 2):
        check_eq([g for g in got if g[2] == qos], [s for s in sent if s[2] == qos],
                 f"order of the QoS {qos} messages")
    # Nothing else (no duplicates), and the subscription still delivers live messages.
    back.expect_marker(pub, "persist/q1", "the queued messages")
    back.disconnect()

    pub.publish("persist/q1", "for the old session", qos=1)
    fresh = ctx.peer("persistent", clean=True)
    check_eq(fresh.session_present, False, "Session Present after a clean connection")
    fresh.subscribe("persist/marker", 1)
    fresh.expect_marker(pub, "persist/marker", "a clean connection (old session discarded)")
    fresh.disconnect()

    if ctx.v5:
        # Session Expiry Interval 0 on DISCONNECT ends the session at once (5.0
        # §3.14.2.2.2): the next connection finds none.
        short = ctx.peer("ends-on-disconnect", clean=False, session_expiry=60)
        short.subscribe("persist/q1", 1)
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        short.disconnect(properties=props)
        again = ctx.peer("ends-on-disconnect", clean=False, session_expiry=60)
        check_eq(again.session_present, False,
                 "Session Present after DISCONNECT with Session Expiry Interval 0")


run(scenario)
