"""MQTT over TLS with client certificates (mutual TLS), 3.1.1 and 5.0.

Run against a TLS listener that requires client certificates signed by ``SAGITTA_TLS_CA``
and admits anonymous clients; ``SAGITTA_TLS_CERT`` / ``SAGITTA_TLS_KEY`` is a valid client
certificate and ``SAGITTA_TLS_DIR`` holds the rest of the test PKI (see
crates/broker/tests/common_tls). With the valid certificate, messages flow at every QoS
(a 200 KB payload included). Refused during the TLS handshake, with no CONNACK and nothing
delivered: a client trusting another CA (it refuses the server), a client without a
certificate, with one from another CA, and with an expired one.
"""

import os
import ssl
import time

from interop import Failure, Peer, WAIT, check, check_eq, run


def refused(ctx, name, tls):
    """Connects with ``tls`` settings; fails unless the connection ends without CONNACK."""
    # A will that would reach the subscriber if the broker let the client in.
    peer = Peer(ctx, f"{name}-{ctx.version}", tls=tls,
                will={"topic": "tls/leak", "payload": f"will of {name}"})
    peer.threaded = False
    try:
        peer.client.connect(ctx.host, ctx.port)
    except (ssl.SSLError, OSError):
        return  # the handshake failed on the client's side
    deadline = time.monotonic() + WAIT
    while peer.connack is None and peer.disconnected is None:
        if time.monotonic() > deadline:
            raise Failure(f"{name}: neither CONNACK nor a closed connection within {WAIT}s")
        try:
            rc = peer.client.loop(timeout=0.05)
        except (ssl.SSLError, OSError):
            return
        if rc != 0:
            return
    check(peer.connack is None, f"{name}: connected: {peer.connack}")


def scenario(ctx):
    directory = os.environ["SAGITTA_TLS_DIR"]
    path = lambda name: os.path.join(directory, name)

    sub = ctx.peer("tls-sub")
    pub = ctx.peer("tls-pub")
    check_eq(sub.subscribe("tls/#", 2), 2, "granted QoS")
    for qos in (0, 1, 2):
        pub.publish(f"tls/{qos}", f"secret at QoS {qos}", qos=qos)
        sub.expect(f"tls/{qos}", f"secret at QoS {qos}", qos=qos)
    big = bytes(range(256)) * 800
    pub.publish("tls/big", big, qos=1)
    sub.expect("tls/big", big, qos=1)

    good = {"ca_certs": path("ca.pem"), "certfile": path("client.pem"),
            "keyfile": path("client.key")}
    refused(ctx, "wrong-ca", dict(good, ca_certs=path("other-ca.pem")))
    refused(ctx, "no-cert", {"ca_certs": path("ca.pem")})
    refused(ctx, "foreign", dict(good, certfile=path("foreign.pem"), keyfile=path("foreign.key")))
    refused(ctx, "expired", dict(good, certfile=path("expired.pem"), keyfile=path("expired.key")))

    # Nothing from the refused clients reached the subscriber.
    pub.publish("tls/after", "marker", qos=1)
    sub.expect("tls/after", "marker", what="the marker (and nothing before it)")


run(scenario)
