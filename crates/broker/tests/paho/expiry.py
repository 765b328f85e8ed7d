"""Message and session expiry over real time (5.0 only; waits 1.5 s once).

A message whose Message Expiry Interval has passed is not delivered: neither a retained one
to a new subscriber nor one queued for an offline session [MQTT-3.3.2-5]; a queued one that
has not expired arrives with the interval reduced by the time it waited [MQTT-3.3.2-6]. A
session whose Session Expiry Interval (1 s) has passed is gone: Session Present 0.
"""

import time

from interop import check, check_eq, publish_props, run


def scenario(ctx):
    pub = ctx.peer("exp-pub")
    pub.publish("exp/retained/short", "gone soon", qos=1, retain=True,
                properties=publish_props(MessageExpiryInterval=1))
    pub.publish("exp/retained/keep", "kept", qos=1, retain=True)

    queued = ctx.peer("exp-queued", clean=False, session_expiry=60)
    queued.subscribe("exp/queued", 1)
    queued.disconnect()
    pub.publish("exp/queued", "short", qos=1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish("exp/queued", "long", qos=1, properties=publish_props(MessageExpiryInterval=100))

    brief = ctx.peer("exp-brief", clean=False, session_expiry=1)
    brief.subscribe("exp/brief", 1)
    brief.disconnect()

    time.sleep(1.5)

    late = ctx.peer("exp-late")
    late.subscribe("exp/retained/#", 1)
    late.expect("exp/retained/keep", "kept", retain=True,
                what="the unexpired retained message (the expired one must not come)")
    late.subscribe("exp/mark", 1)
    late.expect_marker(pub, "exp/mark", "the retained messages")

    back = ctx.peer("exp-queued", clean=False, session_expiry=60)
    check_eq(back.session_present, True, "Session Present (expiry 60 s)")
    m = back.expect("exp/queued", "long", qos=1,
                    what="the unexpired queued message (the expired one must not come)")
    left = m.prop("MessageExpiryInterval")
    check(left is not None and 90 <= left <= 99,
          f"Message Expiry Interval after waiting 1.5 s: {left!r}, expected 90..99")
    back.expect_marker(pub, "exp/queued", "the queued messages")

    again = ctx.peer("exp-brief", clean=False, session_expiry=1)
    check_eq(again.session_present, False, "Session Present after the session expired")


run(scenario, versions=("v5",))
