"""Shared subscriptions (5.0 only).

Two members of `$share/g/jobs/+`: each of 20 messages goes to exactly one of them, and each
gets some (5.0 §4.8.2); another group `$share/h/...` with one member and a plain subscriber
each get all 20. Retained messages are sent only for a new Non-shared Subscription (5.0
§3.3.1.3), so none come when subscribing to a shared one. (Mosquitto 2.0.11 does send them.)
"""

from interop import Failure, check, check_eq, run

N = 20


def drain_until_marker(peer, marker):
    """Payloads received before `marker`."""
    got = []
    while True:
        m = peer.next_message(f"job messages then {marker!r}")
        if m.payload == marker.encode():
            return got
        got.append(m.payload.decode())


def scenario(ctx):
    pub = ctx.peer("pub")
    pub.publish("jobs/old", "retained job", qos=1, retain=True)

    a, b, h = ctx.peer("member-a"), ctx.peer("member-b"), ctx.peer("member-h")
    for peer in (a, b):
        check_eq(peer.subscribe("$share/g/jobs/+", 1), 1, "granted QoS")
    h.subscribe("$share/h/jobs/+", 1)
    plain = ctx.peer("plain")
    plain.subscribe("jobs/+", 1)
    plain.expect("jobs/old", "retained job", retain=True, what="the retained message")
    for peer in (a, b, h):
        peer.subscribe("mark", 1)

    jobs = [f"job {i}" for i in range(N)]
    for i, job in enumerate(jobs):
        pub.publish(f"jobs/{i % 3}", job, qos=1)
    pub.publish("mark", "end", qos=1)

    got_a = drain_until_marker(a, "end")
    got_b = drain_until_marker(b, "end")
    got_h = drain_until_marker(h, "end")
    if "retained job" in got_a + got_b + got_h:
        raise Failure("a retained message was sent for a shared subscription")
    check_eq(sorted(got_a + got_b, key=lambda j: int(j.split()[1])), jobs,
             "group g: every message to exactly one member "
             f"(a got {got_a}, b got {got_b})")
    check(got_a and got_b, f"group g: both members get some (a: {len(got_a)}, b: {len(got_b)})")
    check_eq(got_h, jobs, "group h (one member) gets every message")
    for job in jobs:
        m = plain.next_message(f"{job} on the plain subscription")
        check_eq(m.payload.decode(), job, "plain subscription (order kept)")


run(scenario, versions=("v5",))
