"""Helpers shared by the paho-mqtt interoperability scripts.

Every script is run as ``python3 SCRIPT HOST PORT VERSION`` (VERSION is ``v311`` or ``v5``)
by crates/broker/tests/interop_paho.rs. It exits 0 when the broker behaved, and 1 with a
message on stderr when it did not. Every wait is bounded by ``WAIT`` seconds, and a
watchdog kills the whole script (exit 1, with a traceback) after ``DEADLINE`` seconds.

TLS: when ``SAGITTA_TLS_CA`` is set (a PEM CA file), every client connects over TLS trusting
it, with the client certificate ``SAGITTA_TLS_CERT`` / ``SAGITTA_TLS_KEY`` if those are set.

WebSocket: when ``SAGITTA_WS_PATH`` is set (e.g. ``/mqtt``), every client connects with
``transport="websockets"`` to that path (over TLS as well when ``SAGITTA_TLS_CA`` is set).
"""

import faulthandler
import os
import queue
import socket
import sys
import threading
import time
import traceback

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = [
    "Failure", "Peer", "Properties", "PacketTypes", "ReasonCode", "SubscribeOptions",
    "check", "check_eq", "publish_props", "run", "mqtt", "WAIT",
]

WAIT = 5.0
DEADLINE = 20.0


class Failure(Exception):
    """The broker did not behave as the test expects."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def check_eq(actual, expected, what):
    if actual != expected:
        raise Failure(f"{what}: expected {expected!r}, got {actual!r}")


def publish_props(**values):
    """PUBLISH properties, e.g. ``publish_props(UserProperty=[("a", "b")])``."""
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


class Context:
    def __init__(self, host, port, version):
        self.host = host
        self.port = port
        self.version = version
        self.v5 = version == "v5"
        self.protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        ca = os.environ.get("SAGITTA_TLS_CA")
        self.tls = None
        if ca:
            self.tls = {"ca_certs": ca,
                        "certfile": os.environ.get("SAGITTA_TLS_CERT") or None,
                        "keyfile": os.environ.get("SAGITTA_TLS_KEY") or None}
        self.ws_path = os.environ.get("SAGITTA_WS_PATH") or None

    def peer(self, name, threaded=True, **kwargs):
        """A connected client with id ``NAME-VERSION``; see ``Peer``."""
        peer = Peer(self, f"{name}-{self.version}", **kwargs)
        peer.connect(threaded=threaded)
        return peer


class Received:
    """A received PUBLISH, copied out of paho's callback."""

    def __init__(self, msg):
        self.topic = msg.topic
        self.mid = msg.mid
        self.payload = bytes(msg.payload)
        self.qos = msg.qos
        self.retain = bool(msg.retain)
        self.dup = bool(msg.dup)
        self.properties = getattr(msg, "properties", None)

    def prop(self, name, default=None):
        if self.properties is None:
            return default
        return getattr(self.properties, name, default)

    def __repr__(self):
        return (f"Received(topic={self.topic!r}, payload={self.payload!r}, qos={self.qos}, "
                f"retain={self.retain}, properties={self.properties})")


class Peer:
    """A paho client running its network loop in a thread, with bounded waits.

    ``clean``: Clean Session (3.1.1) / Clean Start (5.0). ``session_expiry``: 5.0 Session
    Expiry Interval. ``will``: dict of ``will_set`` arguments. ``connect_props``: extra 5.0
    CONNECT properties as a dict. ``tls``: dict of ``tls_set`` arguments, instead of the
    context's (see the module docstring).
    """

    def __init__(self, ctx, client_id, clean=True, session_expiry=None, will=None,
                 connect_props=None, manual_ack=False, keepalive=30, tls=None):
        self.ctx = ctx
        self.client_id = client_id
        self.clean = clean
        self.keepalive = keepalive
        self.threaded = True
        kwargs = {}
        if not ctx.v5:
            kwargs["clean_session"] = clean
        if ctx.ws_path:
            kwargs["transport"] = "websockets"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=ctx.protocol, manual_ack=manual_ack, **kwargs)
        if ctx.ws_path:
            self.client.ws_set_options(path=ctx.ws_path)
        self.logs = []
        self.messages = queue.Queue()
        # Re-entrant: wait predicates may call methods that take the lock again.
        self.cond = threading.Condition(threading.RLock())
        self.connack = None
        self.subacks = {}
        self.unsubacks = {}
        self.pub_reasons = {}
        self.disconnected = None
        tls = tls if tls is not None else ctx.tls
        if tls:
            self.client.tls_set(**tls)
        if will is not None:
            self.client.will_set(**will)
        self.connect_props = None
        if ctx.v5:
            props = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                props.SessionExpiryInterval = session_expiry
            for name, value in (connect_props or {}).items():
                setattr(props, name, value)
            self.connect_props = props
        c = self.client
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_publish = self._on_publish
        c.on_disconnect = self._on_disconnect
        c.on_log = self._on_log

    # --- paho callbacks (network thread) ---

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = (flags.session_present, reason_code, properties)
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        self.messages.put(Received(msg))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = reason_codes
            self.cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.unsubacks[mid] = reason_codes
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.pub_reasons[mid] = reason_code
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.disconnected = reason_code
            self.cond.notify_all()

    def _on_log(self, client, userdata, level, buf):
        with self.cond:
            self.logs.append(buf)
            self.cond.notify_all()

    def _wait(self, predicate, what, timeout=WAIT):
        if not self.threaded:
            return self.pump_until(predicate, what, timeout)
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise Failure(f"{self.client_id}: timed out after {timeout}s waiting for {what}")

    def pump_until(self, predicate, what, timeout=WAIT):
        """Thread-less mode: runs paho's loop by hand until `predicate()` holds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise Failure(f"{self.client_id}: timed out after {timeout}s waiting for {what}")
            self.client.loop(timeout=0.05)

    # --- actions ---

    def connect(self, threaded=True):
        """Connects and waits for a successful CONNACK. Returns session present.

        ``threaded=False``: no network thread; the caller drives paho with ``pump_until``.
        Use it for a client whose connection is expected to end: paho's network thread
        would reconnect it by itself."""
        kwargs = {"keepalive": self.keepalive}
        if self.ctx.v5:
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = self.connect_props
        self.threaded = threaded
        self.client.connect(self.ctx.host, self.ctx.port, **kwargs)
        if threaded:
            self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")
        session_present, reason, _ = self.connack
        check(not reason.is_failure, f"{self.client_id}: CONNACK refused: {reason}")
        return session_present

    @property
    def session_present(self):
        return self.connack[0]

    @property
    def connack_properties(self):
        return self.connack[2]

    def subscribe(self, topic, qos=0, options=None, properties=None):
        """Subscribes (one filter) and waits for SUBACK; fails unless granted. Returns the
        granted QoS."""
        if options is not None:
            rc, mid = self.client.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.client.subscribe(topic, qos, properties=properties)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe({topic!r}) failed locally: {rc}")
        self._wait(lambda: mid in self.subacks, f"SUBACK for {topic!r}")
        codes = self.subacks[mid]
        check(len(codes) == 1, f"SUBACK for {topic!r} has {len(codes)} reason codes")
        check(not codes[0].is_failure, f"subscription to {topic!r} refused: {codes[0]}")
        return codes[0].value

    def unsubscribe(self, topic):
        rc, mid = self.client.unsubscribe(topic)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe({topic!r}) failed locally: {rc}")
        self._wait(lambda: mid in self.unsubacks, f"UNSUBACK for {topic!r}")

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publishes and waits until the flow is complete (QoS 0: written). Returns the 5.0
        reason code of PUBACK/PUBREC (Success for QoS 0 and 3.1.1)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain,
                                   properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS,
              f"publish to {topic!r} failed locally: {mqtt.error_string(info.rc)}")
        self._wait(lambda: info.mid in self.pub_reasons, f"completion of publish to {topic!r}")
        return self.pub_reasons[info.mid]

    def next_message(self, what="a message", timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.client_id}: no message within {timeout}s "
                          f"while waiting for {what}") from None

    def expect(self, topic, payload, qos=None, retain=None, what=None):
        """The next message must have this topic and payload (and QoS and RETAIN if given)."""
        what = what or f"{payload!r} on {topic!r}"
        m = self.next_message(what)
        check_eq((m.topic, m.payload), (topic, _bytes(payload)), f"{self.client_id}: {what}")
        if qos is not None:
            check_eq(m.qos, qos, f"{self.client_id}: QoS of {what}")
        if retain is not None:
            check_eq(m.retain, retain, f"{self.client_id}: RETAIN of {what}")
        return m

    def expect_marker(self, publisher, topic, what):
        """Publishes a marker from ``publisher`` (QoS 1) to ``topic``, which this client
        subscribes to; the next message this client gets must be that marker. Proves
        nothing else was queued for it before (messages to one session stay in order)."""
        payload = f"marker after {what}"
        publisher.publish(topic, payload, qos=1)
        m = self.next_message(f"the marker for {what}")
        check((m.topic, m.payload) == (topic, payload.encode()),
              f"{self.client_id}: {what}: got unexpected {m!r} before the marker")

    def disconnect(self, reasoncode=None, properties=None):
        """Sends DISCONNECT, then waits until the broker has handled it and closed its side.

        paho closes its socket as soon as DISCONNECT is written, so a reconnection could
        otherwise reach the broker before the DISCONNECT is processed. A duplicate of the
        socket keeps the connection open until the broker's end of stream arrives (for TLS a
        plain socket on a duplicate of the descriptor: only the end of stream matters)."""
        sock = _raw_socket(self.client.socket())
        watch = socket.fromfd(sock.fileno(), sock.family, sock.type) if sock is not None else None
        self.client.disconnect(reasoncode=reasoncode, properties=properties)
        self._wait(lambda: self.disconnected is not None, "the disconnection")
        if self.threaded:
            self.client.loop_stop()
        if watch is not None:
            try:
                watch.settimeout(WAIT)
                while watch.recv(65536):
                    pass
            except socket.timeout:
                raise Failure(f"{self.client_id}: the broker did not close the connection "
                              f"within {WAIT}s of DISCONNECT") from None
            except OSError:
                pass  # reset: closed as well
            finally:
                watch.close()

    def close_abruptly(self):
        """Closes the socket without DISCONNECT (thread-less mode only)."""
        check(not self.threaded, "close_abruptly needs a thread-less peer")
        sock = self.client.socket()
        _raw_socket(sock).shutdown(socket.SHUT_RDWR)
        sock.close()

    def saw_log(self, fragment):
        with self.cond:
            return any(fragment in line for line in self.logs)


def _raw_socket(sock):
    """The TCP (or TLS) socket under paho's WebSocket wrapper (its ``_socket``), else
    ``sock`` itself."""
    return getattr(sock, "_socket", sock)


def _bytes(payload):
    return payload.encode() if isinstance(payload, str) else bytes(payload)


def run(scenario, versions=("v311", "v5")):
    """Parses ``HOST PORT VERSION``, runs ``scenario(ctx)``, exits 0 or 1 with a message."""
    faulthandler.dump_traceback_later(DEADLINE, exit=True)
    if len(sys.argv) != 4:
        print(f"usage: {sys.argv[0]} HOST PORT v311|v5", file=sys.stderr)
        sys.exit(2)
    host, port, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if version not in versions:
        print(f"{sys.argv[0]}: version {version!r} not supported (only {versions})",
              file=sys.stderr)
        sys.exit(2)
    ctx = Context(host, port, version)
    try:
        scenario(ctx)
    except Failure as e:
        print(f"FAIL [{version}]: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        print(f"FAIL [{version}]: unexpected error", file=sys.stderr)
        sys.exit(1)
    print(f"ok [{version}]")
    # Do not wait for paho's network threads of clients a scenario left connected.
    sys.stdout.flush()
    sys.stderr.flush()
    faulthandler.cancel_dump_traceback_later()
