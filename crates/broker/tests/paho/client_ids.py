"""Client identifiers (3.1.1 and 5.0).

An empty client id is accepted with a clean session [MQTT-3.1.3-6 (3.1.1)] [MQTT-3.1.3-6
(5.0)]; 5.0: CONNACK carries the Assigned Client Identifier [MQTT-3.2.2-16]. Two such
clients get different sessions: both receive what they subscribed to. Long ids and ids with
any UTF-8 characters are accepted.
"""

from interop import Peer, check, check_eq, run


def scenario(ctx):
    a = Peer(ctx, "")
    a.connect()
    b = Peer(ctx, "")
    b.connect()
    if ctx.v5:
        ida = getattr(a.connack_properties, "AssignedClientIdentifier", None)
        idb = getattr(b.connack_properties, "AssignedClientIdentifier", None)
        check(ida and idb and ida != idb,
              f"Assigned Client Identifiers: {ida!r} and {idb!r} (want two different ones)")
    a.subscribe("ids/t", 1)
    b.subscribe("ids/t", 1)
    odd = Peer(ctx, "ünïcödé-client-" + "x" * 100)
    odd.connect()
    odd.publish("ids/t", "hello", qos=1)
    a.expect("ids/t", "hello", qos=1, what="the message on the first anonymous client")
    b.expect("ids/t", "hello", qos=1, what="the message on the second anonymous client")
    check_eq(a.disconnected, None, "first anonymous client still connected")


run(scenario)
