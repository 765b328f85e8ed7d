"""MQTT over WebSocket with paho's ``transport="websockets"`` (3.1.1 and 5.0).

Run with ``SAGITTA_WS_PATH`` (and ``SAGITTA_TLS_CA`` for ``wss://``) against the broker's
WebSocket listener; ``SAGITTA_TCP_PORT`` is a plain TCP listener of the same broker. Messages
flow at QoS 0, 1 and 2 between WebSocket clients and between a WebSocket and a TCP client in
both directions, 200 KB payloads included, and a burst of 300 QoS 1 messages arrives complete
and in order (the broker sends batches of packets in one WebSocket frame).
"""

import os

from interop import Context, check, check_eq, run


def scenario(ctx):
    check(ctx.ws_path is not None, "run with SAGITTA_WS_PATH set")
    tcp_ctx = Context(ctx.host, int(os.environ["SAGITTA_TCP_PORT"]), ctx.version)
    tcp_ctx.ws_path = None
    tcp_ctx.tls = None

    ws_sub = ctx.peer("ws-sub")
    ws_pub = ctx.peer("ws-pub")
    tcp = tcp_ctx.peer("tcp-peer")
    check_eq(ws_sub.subscribe("to-ws/#", 2), 2, "granted QoS")
    check_eq(tcp.subscribe("to-tcp/#", 2), 2, "granted QoS")

    for qos in (0, 1, 2):
        ws_pub.publish(f"to-ws/ws/{qos}", f"ws to ws at QoS {qos}", qos=qos)
        ws_sub.expect(f"to-ws/ws/{qos}", f"ws to ws at QoS {qos}", qos=qos)
        tcp.publish(f"to-ws/tcp/{qos}", f"tcp to ws at QoS {qos}", qos=qos)
        ws_sub.expect(f"to-ws/tcp/{qos}", f"tcp to ws at QoS {qos}", qos=qos)
        ws_pub.publish(f"to-tcp/{qos}", f"ws to tcp at QoS {qos}", qos=qos)
        tcp.expect(f"to-tcp/{qos}", f"ws to tcp at QoS {qos}", qos=qos)

    big = bytes(range(256)) * 800  # 204800 bytes: many frames' worth of reads
    ws_pub.publish("to-tcp/big", big, qos=1)
    tcp.expect("to-tcp/big", big, qos=1)
    tcp.publish("to-ws/big", big, qos=2)
    ws_sub.expect("to-ws/big", big, qos=2)

    n = 300
    for i in range(n):
        info = tcp.client.publish("to-ws/burst", f"{i}", qos=1)
        check_eq(info.rc, 0, "local publish")
    for i in range(n):
        ws_sub.expect("to-ws/burst", f"{i}", qos=1, what=f"burst message {i}")

    ws_pub.disconnect()
    ws_sub.disconnect()
    tcp.disconnect()


run(scenario)
