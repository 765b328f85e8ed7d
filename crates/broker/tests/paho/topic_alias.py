"""Topic Alias (5.0 only).

Towards the broker: the CONNACK announces Topic Alias Maximum > 0; a PUBLISH with topic +
alias sets the alias, one with an empty topic + alias uses it, an alias can be remapped
(5.0 §3.3.2.3.4); subscribers get the full topic name. Towards subscribers: a client that
did not allow aliases (Topic Alias Maximum absent = 0) never gets one; one that allows 4
gets aliases 1..4 only, and every message resolves to its real topic.
"""

from interop import check, check_eq, publish_props, run


def scenario(ctx):
    pub = ctx.peer("alias-pub")
    maximum = getattr(pub.connack_properties, "TopicAliasMaximum", 0)
    check(maximum >= 1, f"CONNACK Topic Alias Maximum is {maximum}")

    plain = ctx.peer("alias-plain")
    plain.subscribe("alias/#", 1)
    aliased = ctx.peer("alias-sub", connect_props={"TopicAliasMaximum": 4})
    aliased.subscribe("alias/#", 1)

    sent = [
        ("alias/a/long/topic/name", "first", 1),  # sets alias 1
        ("", "second", 1),                        # uses it
        ("alias/other", "third", 0),              # remaps alias 1
        ("", "fourth", 2),
        ("", "fifth", 1),
    ]
    expected = ["alias/a/long/topic/name", "alias/a/long/topic/name", "alias/other",
                "alias/other", "alias/other"]
    for topic, payload, qos in sent:
        pub.publish(topic, payload, qos=qos, properties=publish_props(TopicAlias=1))

    for (_, payload, qos), topic in zip(sent, expected):
        m = plain.expect(topic, payload, qos=min(qos, 1), what=f"{payload!r} sent with an alias")
        check_eq(m.prop("TopicAlias"), None, "Topic Alias to a client that allows none")

    aliases = {}
    for (_, payload, qos), topic in zip(sent, expected):
        m = aliased.next_message(f"{payload!r} on the alias-accepting subscriber")
        alias = m.prop("TopicAlias")
        if alias is not None:
            check(1 <= alias <= 4, f"alias {alias} beyond the client's maximum 4")
            if m.topic:
                aliases[alias] = m.topic
            else:
                check(alias in aliases, f"empty topic with unknown alias {alias}")
        else:
            check(m.topic != "", "empty topic without alias")
        resolved = m.topic or aliases.get(alias)
        check_eq((resolved, m.payload.decode()), (topic, payload), "resolved aliased message")


run(scenario, versions=("v5",))
