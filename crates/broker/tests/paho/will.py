"""Will messages (3.1.1 and 5.0).

The will of a client whose network connection closes without DISCONNECT is published
[MQTT-3.1.2-8], with its QoS, payload and (5.0) properties, and retained if Will Retain is 1
[MQTT-3.1.2-17]; a client that sends DISCONNECT
has its will discarded [MQTT-3.1.2-10]; 5.0: DISCONNECT with reason 0x04 (Disconnect with
Will Message) publishes it (5.0 §3.14.2.1).

The abrupt close: the will owner runs paho's network loop by hand (no network thread that
could reconnect it), and once CONNACK is in, its socket is shut down and closed under it.
"""

from interop import PacketTypes, Properties, ReasonCode, check, check_eq, run


def will_props(ctx):
    if not ctx.v5:
        return None
    props = Properties(PacketTypes.WILLMESSAGE)
    props.UserProperty = [("why", "test")]
    props.ContentType = "text/plain"
    props.ResponseTopic = "will/reply"
    props.CorrelationData = b"\x00will"
    props.MessageExpiryInterval = 30
    return props


def will_owner(ctx, name, payload, retain=False):
    """A connected thread-less will owner (so nothing reconnects it after its socket closes)."""
    return ctx.peer(name, threaded=False, will={
        "topic": "will/watch", "payload": payload, "qos": 1, "retain": retain,
        "properties": will_props(ctx)})


def scenario(ctx):
    watcher = ctx.peer("watcher")
    watcher.subscribe("will/watch", 1)
    other = ctx.peer("other")

    # Polite DISCONNECT: no will. Reconnecting with the same id makes the broker finish the
    # old connection first, so a wrongly published will would come before the marker.
    polite = ctx.peer("polite", will={"topic": "will/watch", "payload": "polite will",
                                      "qos": 1})
    polite.disconnect()
    again = ctx.peer("polite")
    watcher.expect_marker(other, "will/watch", "a DISCONNECT (the will must be discarded)")
    again.disconnect()

    # Abrupt close of the socket: the will is published.
    owner = will_owner(ctx, "owner", "owner vanished", retain=True)
    owner.close_abruptly()
    m = watcher.expect("will/watch", "owner vanished", qos=1, retain=False,
                       what="the will after an abrupt close")
    if ctx.v5:
        check_eq(m.prop("UserProperty"), [("why", "test")], "will User Property")
        check_eq(m.prop("ContentType"), "text/plain", "will Content Type")
        check_eq(m.prop("ResponseTopic"), "will/reply", "will Response Topic")
        check_eq(m.prop("CorrelationData"), b"\x00will", "will Correlation Data")
        expiry = m.prop("MessageExpiryInterval")
        check(expiry is not None and 25 <= expiry <= 30, f"will Message Expiry {expiry!r}")
    # Will Retain 1: the will is also kept as the retained message [MQTT-3.1.2-17].
    late = ctx.peer("late")
    late.subscribe("will/watch", 1)
    late.expect("will/watch", "owner vanished", qos=1, retain=True,
                what="the retained will for a later subscriber")
    other.publish("will/watch", b"", qos=1, retain=True)
    watcher.expect("will/watch", b"", what="the retained will being cleared")

    if ctx.v5:
        # DISCONNECT with reason 0x04: the will is published.
        asks = ctx.peer("asks", will={"topic": "will/watch", "payload": "asked for", "qos": 1})
        asks.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT,
                                              "Disconnect with will message"))
        watcher.expect("will/watch", "asked for", qos=1,
                       what="the will after DISCONNECT 0x04")


run(scenario)
