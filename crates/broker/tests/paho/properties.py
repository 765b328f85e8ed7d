"""PUBLISH properties forwarded by the broker (5.0 only).

User Properties arrive unchanged and in order [MQTT-3.3.2-17/18]; Content Type
[MQTT-3.3.2-20] and Payload Format Indicator [MQTT-3.3.2-4] are forwarded; the Message
Expiry Interval is forwarded, less the time waited [MQTT-3.3.2-6]; a message without one
arrives without one. Request/Response: Response Topic [MQTT-3.3.2-15] and Correlation Data
[MQTT-3.3.2-16] reach the responder unchanged, whose reply reaches the requester with the
same Correlation Data.
"""

from interop import check, check_eq, publish_props, run


def scenario(ctx):
    pub, sub = ctx.peer("props-pub"), ctx.peer("props-sub")
    sub.subscribe("props/#", 1)

    user = [("k1", "v1"), ("k2", "v2"), ("k1", "again"), ("ünï", "cödé")]
    pub.publish("props/user", '{"a": 1}', qos=1, properties=publish_props(
        UserProperty=user, ContentType="application/json", PayloadFormatIndicator=1))
    m = sub.expect("props/user", '{"a": 1}', qos=1)
    check_eq(m.prop("UserProperty"), user, "User Properties (order kept)")
    check_eq(m.prop("ContentType"), "application/json", "Content Type")
    check_eq(m.prop("PayloadFormatIndicator"), 1, "Payload Format Indicator")

    pub.publish("props/expiry", "expires", qos=1,
                properties=publish_props(MessageExpiryInterval=120))
    m = sub.expect("props/expiry", "expires", qos=1)
    expiry = m.prop("MessageExpiryInterval")
    check(expiry is not None and 110 <= expiry <= 120,
          f"Message Expiry Interval forwarded as {expiry!r}, expected 110..120")
    pub.publish("props/plain", "no properties", qos=0)
    m = sub.expect("props/plain", "no properties")
    check_eq(m.prop("MessageExpiryInterval"), None, "Message Expiry Interval when none was set")
    check_eq(m.prop("UserProperty"), None, "User Properties when none were set")

    # Request / response.
    requester, responder = ctx.peer("requester"), ctx.peer("responder")
    responder.subscribe("svc/request", 1)
    requester.subscribe("svc/reply/requester", 1)
    correlation = b"\x00\x01corr\xff"
    requester.publish("svc/request", "what time is it", qos=1, properties=publish_props(
        ResponseTopic="svc/reply/requester", CorrelationData=correlation))
    req = responder.expect("svc/request", "what time is it", qos=1)
    check_eq(req.prop("ResponseTopic"), "svc/reply/requester", "Response Topic")
    check_eq(req.prop("CorrelationData"), correlation, "Correlation Data")
    responder.publish(req.prop("ResponseTopic"), "tea time", qos=1,
                      properties=publish_props(CorrelationData=req.prop("CorrelationData")))
    reply = requester.expect("svc/reply/requester", "tea time", qos=1)
    check_eq(reply.prop("CorrelationData"), correlation, "Correlation Data of the reply")


run(scenario, versions=("v5",))
