"""Topic filters and UNSUBSCRIBE (3.1.1 and 5.0).

`+` matches one level, `#` any number including the parent (§4.7.1); `#` and `+/...`
do not match topics starting with `$` [MQTT-4.7.2-1], an explicit `$...` filter does; the
SUBACK has one reason code per filter in order [MQTT-3.9.3-1]. After UNSUBSCRIBE the broker
stops sending [MQTT-3.10.4-2]; 5.0: UNSUBACK 0x00 for an existing subscription and 0x11 No
subscription existed otherwise. A SUBSCRIBE for an existing filter replaces it (new QoS)
[MQTT-3.8.4-3].
"""

from interop import check_eq, run


def scenario(ctx):
    pub = ctx.peer("pub")
    subs = {}
    for name, filt in [("plus", "wild/+/x"), ("hash", "wild/#"), ("all", "#"),
                       ("lead", "+/a/x"), ("dollar", "$app/#")]:
        subs[name] = ctx.peer(f"sub-{name}")
        subs[name].subscribe(filt, 1)
        subs[name].subscribe("mark", 1)

    topics = ["wild/a/x", "wild/a/y", "wild", "wild/a/x/deeper", "$app/a/x"]
    for t in topics:
        pub.publish(t, f"to {t}", qos=1)
    pub.publish("mark", "end", qos=1)
    want = {
        "plus": ["wild/a/x"],
        "hash": ["wild/a/x", "wild/a/y", "wild", "wild/a/x/deeper"],
        "all": ["wild/a/x", "wild/a/y", "wild", "wild/a/x/deeper", "mark"],
        "lead": ["wild/a/x"],
        "dollar": ["$app/a/x"],
    }
    for name, peer in subs.items():
        got = []
        while True:
            m = peer.next_message(f"messages for sub-{name}, then the marker")
            if m.payload == b"end":
                break
            got.append(m.topic)
        check_eq(got, [t for t in want[name] if t != "mark"], f"topics matched by sub-{name}")

    # SUBACK with several filters: one reason code each, in order.
    multi = ctx.peer("multi")
    rc, mid = multi.client.subscribe([("m/a", 0), ("m/b", 1), ("m/c", 2)])
    multi._wait(lambda: mid in multi.subacks, "SUBACK for three filters")
    check_eq([c.value for c in multi.subacks[mid]], [0, 1, 2], "SUBACK reason codes")

    # Replacing a subscription changes its QoS.
    multi.subscribe("m/b", 2)
    pub.publish("m/b", "after re-subscribe", qos=2)
    multi.expect("m/b", "after re-subscribe", qos=2, what="a message at the new QoS")

    plus = subs["plus"]
    rc, mid = plus.client.unsubscribe("wild/+/x")
    plus._wait(lambda: mid in plus.unsubacks, "UNSUBACK")
    rc, mid2 = plus.client.unsubscribe("never/subscribed")
    plus._wait(lambda: mid2 in plus.unsubacks, "UNSUBACK")
    if ctx.v5:
        check_eq([c.value for c in plus.unsubacks[mid]], [0x00], "UNSUBACK reason")
        check_eq([c.value for c in plus.unsubacks[mid2]], [0x11], "UNSUBACK reason (no such)")
    pub.publish("wild/a/x", "after unsubscribe", qos=1)
    plus.expect_marker(pub, "mark", "UNSUBSCRIBE")


run(scenario)
