"""Flow control and size limits the client sets (5.0 only).

Receive Maximum 2: the broker has at most 2 unacknowledged QoS 1 PUBLISHes in flight to the
client [MQTT-3.3.4-9], sending the next one as each PUBACK comes, in order. Maximum Packet
Size 256: the broker does not send a larger PUBLISH to that client [MQTT-3.1.2-24] (it drops
it) but sends the smaller ones. CONNACK announces the broker's own limits (Receive Maximum,
Maximum Packet Size).
"""

import queue

from interop import check, run

HOLD = 0.4  # how long to watch for a message that must not come


def scenario(ctx):
    pub = ctx.peer("pub")
    props = pub.connack_properties
    check(getattr(props, "ReceiveMaximum", 65535) >= 1, "CONNACK Receive Maximum")
    check(getattr(props, "MaximumPacketSize", None), "CONNACK Maximum Packet Size")

    slow = ctx.peer("slow", manual_ack=True, connect_props={"ReceiveMaximum": 2})
    slow.subscribe("flow/t", 1)
    for i in range(6):
        pub.publish("flow/t", f"m{i}", qos=1)
    got = [slow.expect("flow/t", f"m{i}", qos=1) for i in range(2)]
    try:
        extra = slow.messages.get(timeout=HOLD)
    except queue.Empty:
        extra = None
    check(extra is None, f"{extra!r} sent with 2 unacknowledged and Receive Maximum 2")
    for i in range(2, 6):
        slow.client.ack(got[0].mid, 1)
        got = got[1:] + [slow.expect("flow/t", f"m{i}", qos=1,
                                     what=f"m{i} after a PUBACK freed the window")]
    for m in got:
        slow.client.ack(m.mid, 1)

    small = ctx.peer("small", connect_props={"MaximumPacketSize": 256})
    small.subscribe("size/#", 1)
    pub.publish("size/big", "x" * 1000, qos=1)
    pub.publish("size/small", "fits", qos=1)
    small.expect("size/small", "fits", what="the small message (the big one must be dropped)")
    big = "y" * 300
    pub.publish("size/big", big, qos=0)
    small.expect_marker(pub, "size/small", "a QoS 0 message over the client's maximum")


run(scenario, versions=("v5",))
