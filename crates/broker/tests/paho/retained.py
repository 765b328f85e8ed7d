"""Retained messages (3.1.1 and 5.0).

A retained message reaches later subscribers with RETAIN 1 [MQTT-3.3.1-6] [MQTT-3.3.1-8],
at min(published QoS, granted QoS); a live message on an existing subscription arrives with
RETAIN 0 [MQTT-3.3.1-9 (3.1.1)] / Retain As Published 0 [MQTT-3.3.1-12 (5.0)]; a retained
message with an empty payload removes it and is not stored [MQTT-3.3.1-6/7 (5.0)]
[MQTT-3.3.1-10/11 (3.1.1)]. 5.0: Retain Handling 2 sends nothing at subscribe
[MQTT-3.3.1-11], Retain As Published 1 keeps the flag [MQTT-3.3.1-13].
"""

from interop import SubscribeOptions, check_eq, run


def collect(peer, count, what):
    """The next ``count`` messages as {topic: (payload, qos, retain)}."""
    seen = {}
    for _ in range(count):
        m = peer.next_message(what)
        seen[m.topic] = (m.payload, m.qos, m.retain)
    return seen


def scenario(ctx):
    pub = ctx.peer("pub")
    pub.publish("ret/a", "retained A", qos=1, retain=True)
    pub.publish("ret/b", "retained B", qos=2, retain=True)

    early = ctx.peer("early")
    early.subscribe("ret/#", 1)
    check_eq(collect(early, 2, "retained messages"),
             {"ret/a": (b"retained A", 1, True), "ret/b": (b"retained B", 1, True)},
             "retained messages at subscribe (granted QoS 1)")
    # A retained publish to an existing subscription: delivered with RETAIN 0.
    pub.publish("ret/a", "retained A2", qos=1, retain=True)
    early.expect("ret/a", "retained A2", qos=1, retain=False,
                 what="a retained publish to an existing subscription")

    late = ctx.peer("late")
    late.subscribe("ret/+", 2)
    check_eq(collect(late, 2, "retained messages"),
             {"ret/a": (b"retained A2", 1, True), "ret/b": (b"retained B", 2, True)},
             "retained messages at subscribe (granted QoS 2)")

    # Clear ret/a with an empty retained message; it is still forwarded to subscribers.
    pub.publish("ret/a", b"", qos=1, retain=True)
    late.expect("ret/a", b"", what="the empty retained message forwarded live")
    early.expect("ret/a", b"", what="the empty retained message forwarded live")

    after = ctx.peer("after")
    after.subscribe("ret/#", 1)
    after.expect("ret/b", "retained B", qos=1, retain=True)
    after.expect_marker(pub, "ret/marker", "the cleared retained message")

    if ctx.v5:
        none = ctx.peer("rh2")
        none.subscribe("ret/#", options=SubscribeOptions(qos=1, retainHandling=2))
        none.expect_marker(pub, "ret/marker", "a subscription with Retain Handling 2")

        rap = ctx.peer("rap")
        rap.subscribe("rap/t", options=SubscribeOptions(qos=1, retainAsPublished=True))
        pub.publish("rap/t", "kept flag", qos=1, retain=True)
        rap.expect("rap/t", "kept flag", retain=True,
                   what="a live retained message with Retain As Published")
        pub.publish("rap/t", b"", qos=1, retain=True)


run(scenario)
