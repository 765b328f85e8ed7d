"""CONNECT that the broker refuses, and packets over its size limit (5.0 only).

An Authentication Method the broker does not support gets CONNACK 0x8C Bad authentication
method (5.0 §4.12) and no session. A PUBLISH larger than the Maximum Packet Size announced in
CONNACK closes the connection (DISCONNECT 0x95 Packet too large when it can still be read;
5.0 §3.2.2.3.6, §4.13); other clients are unaffected.
"""

from interop import Peer, check, check_eq, run


def scenario(ctx):
    refused = Peer(ctx, f"auth-{ctx.version}",
                   connect_props={"AuthenticationMethod": "SCRAM-SHA-1"})
    refused.client.connect(ctx.host, ctx.port, clean_start=True,
                           properties=refused.connect_props)
    refused.threaded = False
    refused.pump_until(lambda: refused.connack is not None, "CONNACK")
    check_eq(refused.connack[1].value, 0x8C, "CONNACK reason for an unknown auth method")

    watcher = ctx.peer("watcher")
    watcher.subscribe("big/#", 1)
    limit = getattr(watcher.connack_properties, "MaximumPacketSize", None)
    check(limit is not None, "CONNACK has no Maximum Packet Size")

    big = ctx.peer("too-big", threaded=False)
    big.client.publish("big/t", b"z" * (limit + 10), qos=1)
    big.pump_until(lambda: big.disconnected is not None, "the broker to close the connection")
    reason = big.disconnected.value
    # 0x95 if paho read the DISCONNECT; paho reports a reset connection as 0x80.
    check(reason in (0x95, 0x80), f"closing reason {big.disconnected} for a too large packet")

    other = ctx.peer("other")
    other.publish("big/t", "small one", qos=1)
    watcher.expect("big/t", "small one", what="a normal message (the big one must not come)")


run(scenario, versions=("v5",))
