"""Session takeover (3.1.1 and 5.0).

A second connection with a client id already connected makes the broker close the first one
[MQTT-3.1.4-2 (3.1.1)] [MQTT-3.1.4-3 (5.0)]; 5.0: the first gets DISCONNECT 0x8E Session taken
over, and its will is published (5.0 §3.1.4). The new connection works normally.
"""

from interop import check_eq, run


def scenario(ctx):
    watcher = ctx.peer("watcher")
    watcher.subscribe("takeover/will", 1)
    first = ctx.peer("taken", threaded=False,
                     will={"topic": "takeover/will", "payload": "first was taken over", "qos": 1})
    second = ctx.peer("taken")
    first.pump_until(lambda: first.disconnected is not None, "the first connection to close")
    if ctx.v5:
        check_eq(first.disconnected.value, 0x8E, "DISCONNECT reason to the first connection")
        watcher.expect("takeover/will", "first was taken over", qos=1,
                       what="the will of the taken-over connection")
    second.subscribe("takeover/t", 1)
    second.publish("takeover/t", "second works", qos=1)
    second.expect("takeover/t", "second works", qos=1)


run(scenario)
