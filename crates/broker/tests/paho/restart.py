"""A persistent session and retained messages survive a restart of the broker (Sagitta's
store, issue 6). Run twice by the test, with SAGITTA_PHASE=before and then =after, against
two broker processes sharing one data directory.

before: a persistent session (3.1.1: Clean Session 0; 5.0: Clean Start 0 + Session Expiry
600 s) subscribes to restart/# at QoS 2 and disconnects; a publisher sends QoS 1 and QoS 2
messages for it and a retained message, each acknowledged.
after: the session resumes with Session Present 1 [MQTT-3.2.2-2]; the queued messages arrive
exactly once, in order per QoS; the subscription still delivers live messages without
subscribing again; a new client gets the retained message.
"""

import os

from interop import check_eq, run

SENT = [("restart/q1", b"m1", 1), ("restart/q2", b"m2", 2), ("restart/q1", b"m3", 1),
        ("restart/q2", b"m4", 2)]


def scenario(ctx):
    phase = os.environ.get("SAGITTA_PHASE")
    expiry = 600 if ctx.v5 else None
    if phase == "before":
        sub = ctx.peer("survivor", clean=False, session_expiry=expiry)
        sub.subscribe("restart/#", 2)
        sub.disconnect()
        pub = ctx.peer("pub")
        for topic, payload, qos in SENT:
            pub.publish(topic, payload, qos=qos)
        pub.publish("kept/state", b"on", qos=1, retain=True)
        pub.disconnect()
    elif phase == "after":
        back = ctx.peer("survivor", clean=False, session_expiry=expiry)
        check_eq(back.session_present, True, "Session Present after the restart")
        got = [back.next_message(f"queued message {i + 1} of {len(SENT)}")
               for i in range(len(SENT))]
        got = [(m.topic, m.payload, m.qos) for m in got]
        check_eq(sorted(got), sorted(SENT), "messages queued before the restart")
        for qos in (1, 2):
            check_eq([g for g in got if g[2] == qos], [s for s in SENT if s[2] == qos],
                     f"order of the QoS {qos} messages")
        pub = ctx.peer("pub")
        # No duplicates, and the restored subscription delivers live messages.
        back.expect_marker(pub, "restart/marker", "the queued messages")
        back.disconnect()
        fresh = ctx.peer("fresh")
        fresh.subscribe("kept/#", 1)
        fresh.expect("kept/state", b"on", retain=True, what="the retained message")
        fresh.disconnect()
    else:
        raise SystemExit(f"SAGITTA_PHASE must be before or after, not {phase!r}")


run(scenario)
