"""Publish/subscribe at QoS 0, 1 and 2 (3.1.1 and 5.0).

A QoS 2 subscriber gets each message at the QoS it was published with, a QoS 1 subscriber
at min(published, granted) [MQTT-3.8.4-8]; a 200 KB payload arrives intact; a 5.0 QoS 1
publish without subscribers is acknowledged with 0x10 No matching subscribers.
"""

from interop import check_eq, run


def scenario(ctx):
    sub2 = ctx.peer("sub-q2")
    sub1 = ctx.peer("sub-q1")
    pub = ctx.peer("pub")
    check_eq(sub2.subscribe("qos/#", 2), 2, "granted QoS")
    check_eq(sub1.subscribe("qos/#", 1), 1, "granted QoS")

    for qos in (0, 1, 2):
        topic, payload = f"qos/{qos}", f"message at QoS {qos}"
        pub.publish(topic, payload, qos=qos)
        m = sub2.expect(topic, payload, qos=qos, retain=False)
        check_eq(m.dup, False, "DUP of a first delivery")
        sub1.expect(topic, payload, qos=min(qos, 1), retain=False)

    big = bytes(range(256)) * 800  # 204800 bytes, several socket reads
    pub.publish("qos/big", big, qos=1)
    sub2.expect("qos/big", big, qos=1)
    sub1.expect("qos/big", big, qos=1)

    if ctx.v5:
        reason = pub.publish("nobody/listens", "x", qos=1)
        check_eq(reason.value, 0x10, "PUBACK reason without subscribers")
        reason = pub.publish("qos/1", "y", qos=2)
        check_eq(reason.value, 0x00, "PUBREC reason with subscribers")


run(scenario)
