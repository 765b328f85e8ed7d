"""Subscription Identifiers (5.0 only).

A message matching subscriptions with identifiers carries them [MQTT-3.3.4-3]; overlapping
subscriptions give either one message with all their identifiers or one copy per subscription
[MQTT-3.3.4-4/5]; a subscription without identifier adds none; a retained message sent at
subscribe carries the new subscription's identifier; re-subscribing replaces the identifier.
"""

from interop import PacketTypes, Properties, check, check_eq, run


def sub_props(identifier):
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = identifier
    return props


def ids_of(m):
    ids = m.prop("SubscriptionIdentifier")
    if ids is None:
        return []
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def copies_until_marker(peer, pub, topic, payload):
    """Publishes `payload` to `topic`, then a marker; returns the copies received before it."""
    pub.publish(topic, payload, qos=1)
    pub.publish("sidmark", "marker", qos=1)
    copies = []
    while True:
        m = peer.next_message(f"copies of {payload!r}, then the marker")
        if m.topic == "sidmark":
            return copies
        check_eq((m.topic, m.payload.decode()), (topic, payload), "message before the marker")
        copies.append(m)


def scenario(ctx):
    pub, sub = ctx.peer("sid-pub"), ctx.peer("sid-sub")
    sub.subscribe("sid/+", 1, properties=sub_props(7))
    sub.subscribe("sid/#", 1, properties=sub_props(9))
    sub.subscribe("sidmark", 1)
    sub.subscribe("plain/t", 1)

    copies = copies_until_marker(sub, pub, "sid/a", "two matches")
    check(1 <= len(copies) <= 2, f"{len(copies)} copies for two overlapping subscriptions")
    check_eq(sorted(i for m in copies for i in ids_of(m)), [7, 9],
             "identifiers of overlapping subscriptions")

    copies = copies_until_marker(sub, pub, "sid/a/b", "one match")
    check_eq([ids_of(m) for m in copies], [[9]], "identifiers for sid/# only")

    copies = copies_until_marker(sub, pub, "plain/t", "no identifier")
    check_eq([ids_of(m) for m in copies], [[]], "identifiers for a subscription without one")

    sub.subscribe("sid/#", 1, properties=sub_props(12))
    copies = copies_until_marker(sub, pub, "sid/a/b", "after re-subscribing")
    check_eq([ids_of(m) for m in copies], [[12]], "identifier after re-subscribing")

    pub.publish("sidr/t", "retained", qos=1, retain=True)
    late = ctx.peer("sid-late")
    late.subscribe("sidr/#", 1, properties=sub_props(11))
    m = late.expect("sidr/t", "retained", retain=True)
    check_eq(ids_of(m), [11], "identifier of a retained message sent at subscribe")


run(scenario, versions=("v5",))
