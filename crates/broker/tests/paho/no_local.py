"""No Local (5.0 only): a subscription with No Local 1 does not get messages its own client
publishes [MQTT-3.8.3-3], but does get other clients' messages on the same topic.
"""

from interop import SubscribeOptions, run


def scenario(ctx):
    a, b = ctx.peer("nl-a"), ctx.peer("nl-b")
    a.subscribe("nl/t", options=SubscribeOptions(qos=1, noLocal=True))
    b.subscribe("nl/t", 1)

    for qos in (0, 1, 2):
        a.publish("nl/t", f"own message at QoS {qos}", qos=qos)
        b.expect("nl/t", f"own message at QoS {qos}", what="a's message on b's subscription")
    b.publish("nl/t", "from b", qos=1)
    a.expect("nl/t", "from b", qos=1,
             what="another client's message (its own must not have come before it)")


run(scenario, versions=("v5",))
