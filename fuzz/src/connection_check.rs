//! The property checked by the `connection` fuzz target, shared with the replay test
//! (`crates/broker/tests/fuzz_connection.rs` includes this file with `#[path]`).
//!
//! Each input is a small script run against a fresh in-memory broker (`sagitta_broker::Broker`
//! with one TCP listener that is never used): up to three clients, each on a
//! `tokio::io::duplex` pair served by `Broker::serve_stream` as if accepted by the listener,
//! send MQTT packets chosen by the input (3.1, 3.1.1 or 5.0), some of them corrupted, plus raw
//! bytes. Everything runs on one current-thread tokio runtime, with real time.
//!
//! # Input layout
//!
//! Byte 0 configures the run: bit 0 tight broker limits (see [`broker_config`]), bit 1 a
//! 64-byte duplex buffer (else 4096: the broker reads and writes in pieces), bit 2 the probe
//! client speaks 3.1.1 (else 5.0). The rest is a sequence of operations, one opcode byte each
//! followed by the operation's argument bytes ([`Kind::args`]; bytes past the end read as 0):
//!
//! - opcode bits 0–3: the [`Kind`];
//! - bits 4–5: the client slot (0, 1, 2; 3 is 0);
//! - bits 6–7 both set: the packet this operation encodes is corrupted: two more bytes follow
//!   the arguments, a position and a value XORed into the byte at that position.
//!
//! # Properties
//!
//! - Nothing panics, in the broker or here.
//! - Everything the broker sends a client decodes with that client's protocol version and its
//!   5.0 Maximum Packet Size; the first packet is CONNACK (and only the first); nothing follows
//!   a refusing CONNACK or a DISCONNECT; DISCONNECT and AUTH only go to 5.0 clients; a clean
//!   start never gets Session Present.
//! - Acknowledgements echo what the client sent: every PUBACK / PUBREC / PUBCOMP carries the
//!   packet id of a QoS 1 PUBLISH / QoS 2 PUBLISH / PUBREL the client sent on that connection,
//!   every SUBACK / UNSUBACK the id of a SUBSCRIBE / UNSUBSCRIBE with as many reason codes as
//!   it had filters (3.x UNSUBACK: none); PINGRESPs never outnumber PINGREQs.
//! - Outgoing PUBLISHes: QoS at most the broker's `maximum_qos`; topic aliases within the
//!   client's Topic Alias Maximum and an empty topic only with an alias set before. While the
//!   client acknowledges only the broker's own messages, in order of the flow (the model is
//!   then exact): no packet id is reused while in flight, no PUBREL comes before the client's
//!   PUBREC, and the messages in flight never exceed the client's Receive Maximum nor the
//!   broker's `max_inflight`.
//! - The broker answers or closes: at the end of the script, every connection whose bytes were
//!   all well-formed gets a PINGREQ and must answer PINGRESP (or close); then the client closes
//!   its side and the broker must close too. Each wait is bounded ([`WAIT`]).
//! - The broker is still healthy: a new client connects, subscribes, publishes at QoS 1 and
//!   receives its message; then the broker shuts down within [`WAIT`].
//!
//! What the broker received is known exactly: every byte written to it also goes through the
//! same decoder with the same limits (a mirror), before it is written.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sagitta_broker::{Broker, Config};
use sagitta_proto::{
    Auth, AuthProperties, Connect, ConnectProperties, Disconnect, DisconnectProperties, MqttStr,
    Packet, ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode,
    RetainHandling, Subscribe, SubscribeProperties, SubscriptionId, SubscriptionOptions,
    TopicFilter, TopicName, Unsubscribe, UnsubscribeProperties, Will, WillProperties, decode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

/// The longest the harness waits for any one answer, close or shutdown. Answers take
/// microseconds; this only has to be far from them on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(10);
/// Operations run per input at most; the rest is ignored.
pub const MAX_OPS: usize = 256;
/// Client slots (simultaneous connections).
pub const SLOTS: usize = 3;

/// Client ids a script uses (the probe uses another): the empty one asks the broker for one.
const CLIENT_IDS: [&str; 4] = ["a", "b", "c", ""];
/// Topic names a script publishes to; the empty one needs a 5.0 topic alias.
const TOPICS: [&str; 8] = [
    "a",
    "a/b",
    "a/b/c",
    "b/c",
    "$SYS/x",
    "a/b/c/d/e/f",
    "",
    "a/b",
];
/// Topic filters a script subscribes to.
const FILTERS: [&str; 12] = [
    "a",
    "a/b",
    "a/+",
    "#",
    "a/#",
    "+/+",
    "$SYS/#",
    "$share/g/a/#",
    "$share/g/#",
    "a/b/c/d/e/f",
    "+",
    "b/c",
];

/// What an operation does. Its argument bytes are described on each variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CONNECT on a new connection (an open one in the slot is dropped first).
    /// Args: version (`% 3`: 3.1, 3.1.1, 5.0), client id (`% 4` of [`CLIENT_IDS`]), flags
    /// (bit 0 clean start, 1 will, 2 will retain, 3–4 will QoS, 5 username, 6 password, 7 an
    /// unknown 5.0 authentication method), keep-alive (`% 4`: 0, 60, 600, 1 s), 5.0 Session
    /// Expiry (`% 4`: none, 0, 30, max), Receive Maximum (`% 4`: none, 1, 2, 100), Maximum
    /// Packet Size (`% 4`: none, 32, 128, 1024), Topic Alias Maximum (`% 4`: none, 0, 1, 3),
    /// extras (bit 0 Request Problem Information 0, 1 Request Response Information, 2 user
    /// property, 3–4 Will Delay (none, 0, 1 s), 5 will Message Expiry 1 s).
    Connect,
    /// PUBLISH. Args: topic (`% 8` of [`TOPICS`]), flags (bits 0–1 QoS `% 3`, 2 retain, 3
    /// DUP), packet id (`< 128` the next one, else `% 5 + 1`), payload (bits 0–3 length, 4 a
    /// 300-byte payload, 5 invalid UTF-8), 5.0 properties (bits 0–1 Topic Alias, 2 Payload
    /// Format Indicator, 3 Message Expiry 1 s, 4 Response Topic, 5 Correlation Data, 6 user
    /// property, 7 Content Type).
    Publish,
    /// SUBSCRIBE. Args: meta (bits 0–1 number of filters (0 and 1: one), 2 packet id 1 (else
    /// the next), 3 5.0 Subscription Identifier, 4 user property), then three (filter `% 12`
    /// of [`FILTERS`], options: bits 0–1 QoS `% 3`, 2 No Local, 3 Retain As Published, 4–5
    /// Retain Handling `% 3`) pairs.
    Subscribe,
    /// UNSUBSCRIBE. Args: meta (bit 0 two filters, 2 packet id 1), two filters.
    Unsubscribe,
    /// The client's next step for one of the broker's QoS 1/2 messages in flight, as a
    /// well-behaved client would: PUBACK, PUBREC, or PUBCOMP after the broker's PUBREL.
    /// Args: which (`%` the number in flight), bit 7 of it: a 5.0 error reason (0x80).
    Ack,
    /// PUBACK, PUBREC, PUBREL or PUBCOMP (`% 4` of arg 0) with any packet id (`% 8 + 1`).
    StrayAck,
    /// PUBREL for one of the client's own QoS 2 messages the broker has acknowledged
    /// (`%` their number), or for packet id 1 if there is none.
    PubRel,
    /// PINGREQ. No args.
    PingReq,
    /// DISCONNECT. Args: 5.0 reason (`% 3`: 0x00, 0x04 with will, 0x80), 5.0 Session Expiry
    /// (`% 3`: none, 0, 60).
    Disconnect,
    /// 5.0 AUTH (re-authentication) with an unknown method. Args: reason (bit 0: 0x19
    /// Re-authenticate, else 0x18 Continue).
    Auth,
    /// Raw bytes. Args: length (`% 64`), then that many bytes.
    Raw,
    /// Lets the broker run: yields to the runtime `n % 64` times; if bits 6–7 are both set,
    /// sleeps `n % 8` ms instead. Args: n.
    Yield,
    /// Drops the connection at once (both directions), without DISCONNECT. No args.
    Kill,
    /// Closes the client's writing side (the broker reads end of stream). No args.
    Close,
    /// The broker publishes a message itself. Args: topic (`% 8` of [`TOPICS`]; the empty one
    /// is skipped), flags (bits 0–1 QoS `% 3`, 2 retain).
    BrokerPublish,
    /// [`Kind::Ack`] for every message in flight. No args.
    AckAll,
}

impl Kind {
    const ALL: [Kind; 16] = [
        Kind::Connect,
        Kind::Publish,
        Kind::Subscribe,
        Kind::Unsubscribe,
        Kind::Ack,
        Kind::StrayAck,
        Kind::PubRel,
        Kind::PingReq,
        Kind::Disconnect,
        Kind::Auth,
        Kind::Raw,
        Kind::Yield,
        Kind::Kill,
        Kind::Close,
        Kind::BrokerPublish,
        Kind::AckAll,
    ];

    /// The opcode's low four bits.
    pub fn code(self) -> u8 {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0) as u8
    }

    /// How many argument bytes follow the opcode ([`Kind::Raw`]'s data not counted).
    pub fn args(self) -> usize {
        match self {
            Kind::Connect => 9,
            Kind::Publish => 5,
            Kind::Subscribe => 7,
            Kind::Unsubscribe => 3,
            Kind::Ack | Kind::PubRel | Kind::Auth | Kind::Raw | Kind::Yield => 1,
            Kind::StrayAck | Kind::Disconnect | Kind::BrokerPublish => 2,
            Kind::PingReq | Kind::Kill | Kind::Close | Kind::AckAll => 0,
        }
    }
}

/// One operation of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// What it does.
    pub kind: Kind,
    /// Which client (0..[`SLOTS`]).
    pub slot: usize,
    /// Its argument bytes ([`Kind::args`] of them).
    pub args: Vec<u8>,
    /// [`Kind::Raw`]: the bytes.
    pub data: Vec<u8>,
    /// Corrupt the encoded packet: XOR `.1` into the byte at `.0 % len`.
    pub corrupt: Option<(u8, u8)>,
}

impl Op {
    /// An operation without corruption or data.
    pub fn new(kind: Kind, slot: usize, args: &[u8]) -> Self {
        let mut args = args.to_vec();
        args.resize(kind.args(), 0);
        Op {
            kind,
            slot,
            args,
            data: Vec::new(),
            corrupt: None,
        }
    }

    /// The bytes that read back as this operation.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.kind.code() | ((self.slot as u8 & 3) << 4)];
        if self.corrupt.is_some() {
            out[0] |= 0xC0;
        }
        out.extend_from_slice(&self.args);
        if self.kind == Kind::Raw {
            out.extend_from_slice(&self.data);
        }
        if let Some((pos, xor)) = self.corrupt {
            out.extend([pos, xor]);
        }
        out
    }

    fn arg(&self, i: usize) -> u8 {
        self.args.get(i).copied().unwrap_or(0)
    }
}

/// Reads bytes, 0 past the end.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
}

/// The run's settings (byte 0) and its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Byte 0: see the module docs.
    pub settings: u8,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Script {
    /// Reads a script from fuzz input (at most [`MAX_OPS`] operations).
    pub fn parse(data: &[u8]) -> Script {
        let mut input = Input { data };
        let settings = input.byte();
        let mut ops = Vec::new();
        while !input.data.is_empty() && ops.len() < MAX_OPS {
            let opcode = input.byte();
            let kind = Kind::ALL[usize::from(opcode & 0x0F)];
            let slot = usize::from((opcode >> 4) & 3) % SLOTS;
            let args: Vec<u8> = (0..kind.args()).map(|_| input.byte()).collect();
            let data = if kind == Kind::Raw {
                let n = usize::from(args[0] % 64).min(input.data.len());
                let (d, rest) = input.data.split_at(n);
                input.data = rest;
                d.to_vec()
            } else {
                Vec::new()
            };
            let corrupt = (opcode & 0xC0 == 0xC0).then(|| (input.byte(), input.byte()));
            ops.push(Op {
                kind,
                slot,
                args,
                data,
                corrupt,
            });
        }
        Script { settings, ops }
    }

    /// The bytes that parse back as this script.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.settings];
        for op in &self.ops {
            out.extend(op.to_bytes());
        }
        out
    }
}

/// The broker's configuration for a run: in memory, no `$SYS`, no login delay; with `tight`,
/// small limits everywhere (packet size 256, in-flight and receive maximum 2, queue 3, topic
/// aliases 2, subscriptions 3, topic levels 4, QoS 1, keep-alive at most 30 s, no empty
/// client ids).
pub fn broker_config(tight: bool) -> Config {
    let mut config = Config::default()
        .listen([SocketAddr::from(([127, 0, 0, 1], 0))])
        .in_memory();
    config.failed_login_delay_ms = 0;
    config.sys_interval = 0;
    if tight {
        config.max_packet_size = 256;
        config.max_inflight = 2;
        config.receive_maximum = 2;
        config.max_queued_messages = 3;
        config.topic_alias_maximum = 2;
        config.max_subscriptions_per_client = 3;
        config.max_topic_levels = 4;
        config.maximum_qos = 1;
        config.max_keep_alive = 30;
        config.allow_zero_length_client_id = false;
    }
    config
}

thread_local! {
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
    static PANICKED: Cell<bool> = const { Cell::new(false) };
    /// `SAGITTA_FUZZ_TRACE` set: print every packet both ways (to debug an input).
    static TRACE: bool = std::env::var_os("SAGITTA_FUZZ_TRACE").is_some();
}

fn trace(slot: usize, arrow: &str, packet: &Packet) {
    if TRACE.with(|t| *t) {
        eprintln!("client {slot} {arrow} {packet:?}");
    }
}

/// Runs `data` as a script (see the module docs), panicking with the broken property, if any.
pub fn check(data: &[u8]) {
    let script = Script::parse(data);
    let failures = RUNTIME.with(|rt| match rt {
        Some(rt) => rt.block_on(run(&script)),
        None => vec!["cannot build a tokio runtime".to_owned()],
    });
    if !failures.is_empty() {
        panic!(
            "connection fuzz property broken:\n  {}\nscript: {script:#?}",
            failures.join("\n  ")
        );
    }
}

/// Installs a panic hook that also remembers, per thread, that a panic happened (tokio
/// catches panics of spawned tasks; libFuzzer's own hook aborts instead). Stable runners call
/// it once; [`take_panicked`] then tells whether a run panicked anywhere on this thread.
pub fn install_panic_flag() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.with(|p| p.set(true));
        previous(info);
    }));
}

/// Whether a panic happened on this thread since the last call (see [`install_panic_flag`]).
pub fn take_panicked() -> bool {
    PANICKED.with(|p| p.replace(false))
}

/// Where a QoS 1/2 message from the broker is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1, waiting for PUBACK.
    Qos1,
    /// QoS 2, waiting for PUBREC.
    Qos2,
    /// QoS 2, PUBREC sent: waiting for PUBREL.
    Received,
    /// QoS 2, PUBREL received: waiting for PUBCOMP.
    Released,
}

/// What one connection's client knows: what it sent (from the mirror) and what it received.
#[derive(Debug, Default)]
struct Model {
    /// The client's slot (for traces).
    slot: usize,
    /// From the CONNECT the broker received: its version, and the 5.0 limits it asked for.
    version: Option<ProtocolVersion>,
    clean_start: bool,
    max_packet: Option<usize>,
    receive_max: usize,
    alias_max: u16,
    /// The mirror cannot follow the stream any more (a decode error) or holds a partial
    /// packet.
    mirror_broken: bool,
    mirror_partial: bool,
    /// The client sent DISCONNECT.
    disconnect_sent: bool,
    /// Ids of what the client sent.
    pub1: HashSet<u16>,
    pub2: HashSet<u16>,
    pubrel: HashSet<u16>,
    subscribes: HashMap<u16, Vec<usize>>,
    unsubscribes: HashMap<u16, Vec<usize>>,
    pings: usize,
    /// The client's own QoS 2 messages the broker has sent PUBREC for.
    recorded: Vec<u16>,
    /// From the broker.
    connack: Option<ReasonCode>,
    packets: usize,
    pongs: usize,
    disconnected: bool,
    eof: bool,
    /// The broker's QoS 1/2 messages in flight. Exact while `exact`.
    in_flight: BTreeMap<u16, Stage>,
    exact: bool,
    /// Topic aliases the broker set.
    aliases: HashSet<u16>,
    failures: Vec<String>,
}

impl Model {
    fn fail(&mut self, what: String) {
        if self.failures.len() < 8 {
            self.failures.push(what);
        }
    }

    /// Takes note of a packet the broker is about to receive.
    fn sent(&mut self, packet: &Packet) {
        trace(self.slot, "->", packet);
        match packet {
            Packet::Connect(c) => {
                self.version = Some(c.protocol);
                self.clean_start = c.clean_start;
                if c.protocol.is_v5() {
                    self.max_packet = c.properties.maximum_packet_size.map(|m| m.get() as usize);
                    self.receive_max = c
                        .properties
                        .receive_maximum
                        .map_or(65_535, |m| usize::from(m.get()));
                    self.alias_max = c.properties.topic_alias_maximum.unwrap_or(0);
                } else {
                    self.receive_max = 65_535;
                }
            }
            Packet::Publish(p) => match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => {
                    self.pub1.insert(id.get());
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    self.pub2.insert(id.get());
                }
                _ => {}
            },
            Packet::PubRel(r) => {
                self.pubrel.insert(r.packet_id.get());
            }
            Packet::Subscribe(s) => self
                .subscribes
                .entry(s.packet_id.get())
                .or_default()
                .push(s.filters.len()),
            Packet::Unsubscribe(u) => self
                .unsubscribes
                .entry(u.packet_id.get())
                .or_default()
                .push(u.filters.len()),
            Packet::PingReq => self.pings += 1,
            Packet::Disconnect(_) => self.disconnect_sent = true,
            Packet::PubAck(r) => {
                let id = r.packet_id.get();
                if self.in_flight.get(&id) == Some(&Stage::Qos1) {
                    self.in_flight.remove(&id);
                } else {
                    self.exact = false;
                }
            }
            Packet::PubRec(r) => {
                let id = r.packet_id.get();
                if self.in_flight.get(&id) == Some(&Stage::Qos2) {
                    if r.reason.is_error() {
                        self.in_flight.remove(&id);
                    } else {
                        self.in_flight.insert(id, Stage::Received);
                    }
                } else {
                    self.exact = false;
                }
            }
            Packet::PubComp(r) => {
                let id = r.packet_id.get();
                if self.in_flight.get(&id) == Some(&Stage::Released) {
                    self.in_flight.remove(&id);
                } else {
                    self.exact = false;
                }
            }
            _ => {}
        }
    }

    /// Checks a packet from the broker and takes note of it.
    fn received(&mut self, packet: &Packet, inflight_limit: usize, maximum_qos: u8) {
        trace(self.slot, "<-", packet);
        self.packets += 1;
        let first = self.packets == 1;
        let v5 = self.version.is_some_and(ProtocolVersion::is_v5);
        if self.disconnected {
            self.fail(format!("{packet:?} after DISCONNECT"));
        }
        if let Some(reason) = self.connack
            && reason.is_error()
        {
            self.fail(format!("{packet:?} after a refusing CONNACK"));
        }
        match packet {
            Packet::ConnAck(c) => {
                if !first {
                    self.fail("a second CONNACK".to_owned());
                }
                if c.session_present && (self.clean_start || c.reason.is_error()) {
                    self.fail(format!(
                        "CONNACK with Session Present after a clean start or refusal: {c:?}"
                    ));
                }
                self.connack = Some(c.reason);
            }
            _ if first => self.fail(format!("first packet is not CONNACK: {packet:?}")),
            Packet::Publish(p) => self.received_publish(p, inflight_limit, maximum_qos),
            Packet::PubAck(r) if !self.pub1.contains(&r.packet_id.get()) => self.fail(format!(
                "PUBACK {} for no QoS 1 PUBLISH of the client",
                r.packet_id
            )),
            Packet::PubRec(r) => {
                let id = r.packet_id.get();
                if self.pub2.contains(&id) {
                    if !r.reason.is_error() && !self.recorded.contains(&id) {
                        self.recorded.push(id);
                    }
                } else {
                    self.fail(format!("PUBREC {id} for no QoS 2 PUBLISH of the client"));
                }
            }
            Packet::PubComp(r) => {
                let id = r.packet_id.get();
                if !self.pubrel.contains(&id) {
                    self.fail(format!("PUBCOMP {id} for no PUBREL of the client"));
                }
                self.recorded.retain(|x| *x != id);
            }
            Packet::PubRel(r) => {
                let id = r.packet_id.get();
                match self.in_flight.get(&id) {
                    Some(Stage::Qos2) if self.exact => {
                        self.fail(format!("PUBREL {id} before the client's PUBREC"))
                    }
                    Some(Stage::Qos1) if self.exact => {
                        self.fail(format!("PUBREL {id} for a QoS 1 message"))
                    }
                    // A PUBREL resent for a message of an earlier connection, or one the model
                    // cannot follow any more.
                    _ => {
                        self.in_flight.insert(id, Stage::Released);
                    }
                }
            }
            Packet::SubAck(s) => {
                let counts = self.subscribes.get(&s.packet_id.get());
                if !counts.is_some_and(|c| c.contains(&s.reasons.len())) {
                    self.fail(format!(
                        "SUBACK {} with {} reasons; SUBSCRIBEs with that id had {counts:?} filters",
                        s.packet_id,
                        s.reasons.len()
                    ));
                }
            }
            Packet::UnsubAck(u) => {
                let counts = self.unsubscribes.get(&u.packet_id.get());
                let ok = match counts {
                    None => false,
                    Some(_) if !v5 => u.reasons.is_empty(),
                    Some(c) => c.contains(&u.reasons.len()),
                };
                if !ok {
                    self.fail(format!(
                        "UNSUBACK {} with {} reasons; UNSUBSCRIBEs with that id had {counts:?} filters",
                        u.packet_id,
                        u.reasons.len()
                    ));
                }
            }
            Packet::PingResp => {
                self.pongs += 1;
                if self.pongs > self.pings {
                    self.fail(format!(
                        "{} PINGRESPs for {} PINGREQs",
                        self.pongs, self.pings
                    ));
                }
            }
            Packet::Disconnect(_) if v5 => self.disconnected = true,
            Packet::Auth(_) if v5 => {}
            Packet::PubAck(_) => {}
            other => self.fail(format!("unexpected packet from the broker: {other:?}")),
        }
    }

    fn received_publish(&mut self, p: &Publish, inflight_limit: usize, maximum_qos: u8) {
        if p.qos as u8 > maximum_qos {
            self.fail(format!(
                "PUBLISH at {:?} above maximum_qos {maximum_qos}",
                p.qos
            ));
        }
        match p.properties.topic_alias {
            Some(alias) => {
                if alias.get() > self.alias_max {
                    self.fail(format!(
                        "topic alias {alias} above the client's maximum {}",
                        self.alias_max
                    ));
                }
                if p.topic.is_empty() {
                    if !self.aliases.contains(&alias.get()) {
                        self.fail(format!("PUBLISH with unknown topic alias {alias}"));
                    }
                } else {
                    self.aliases.insert(alias.get());
                }
            }
            None if p.topic.is_empty() => self.fail("PUBLISH without topic or alias".to_owned()),
            None => {}
        }
        let Some(id) = p.packet_id else {
            return;
        };
        let id = id.get();
        if self.exact && self.in_flight.contains_key(&id) {
            self.fail(format!("packet id {id} reused while in flight"));
        }
        let stage = if p.qos == QoS::ExactlyOnce {
            Stage::Qos2
        } else {
            Stage::Qos1
        };
        self.in_flight.insert(id, stage);
        let limit = inflight_limit.min(self.receive_max);
        if self.exact && self.in_flight.len() > limit {
            self.fail(format!(
                "{} messages in flight, over the limit {limit} (Receive Maximum {}, max_inflight {inflight_limit})",
                self.in_flight.len(),
                self.receive_max
            ));
        }
    }
}

fn lock(model: &Mutex<Model>) -> MutexGuard<'_, Model> {
    model.lock().unwrap_or_else(|e| e.into_inner())
}

/// The client end of one connection.
struct Client {
    writer: Option<WriteHalf<DuplexStream>>,
    reader: JoinHandle<()>,
    model: Arc<Mutex<Model>>,
    /// What the broker has received and not decoded yet (the mirror's buffer).
    mirror: BytesMut,
    next_id: u16,
    /// The mirror's idea of the protocol: `None` until a CONNECT was decoded.
    version: Option<ProtocolVersion>,
}

/// One run's fixed facts.
struct Env {
    broker: Broker,
    max_packet: usize,
    max_inflight: usize,
    maximum_qos: u8,
    buffer: usize,
    next_port: u16,
    /// Broken properties seen so far (from clients already dropped too).
    failures: Vec<String>,
}

impl Client {
    fn open(env: &mut Env, slot: usize) -> Option<Client> {
        let (ours, theirs) = tokio::io::duplex(env.buffer);
        env.next_port = env.next_port.wrapping_add(1);
        let peer = SocketAddr::from(([127, 0, 0, 2], env.next_port));
        if !env.broker.serve_stream(theirs, peer) {
            return None;
        }
        let (read, write) = tokio::io::split(ours);
        let model = Arc::new(Mutex::new(Model {
            slot,
            exact: true,
            receive_max: 65_535,
            ..Model::default()
        }));
        let reader = tokio::spawn(read_loop(
            read,
            model.clone(),
            env.max_inflight,
            env.maximum_qos,
        ));
        Some(Client {
            writer: Some(write),
            reader,
            model,
            mirror: BytesMut::new(),
            next_id: 0,
            version: None,
        })
    }

    fn next_id(&mut self) -> NonZeroU16 {
        self.next_id = self.next_id.wrapping_add(1);
        NonZeroU16::new(self.next_id).unwrap_or(NonZeroU16::MIN)
    }

    /// Passes `bytes` through the mirror (the model learns what the broker will get), then
    /// writes them. A write error means the broker closed: the writer is dropped.
    async fn write(&mut self, bytes: &[u8], max_packet: usize) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        {
            let mut model = lock(&self.model);
            if !model.mirror_broken {
                self.mirror.extend_from_slice(bytes);
                loop {
                    let version = self.version.unwrap_or(ProtocolVersion::V5);
                    match decode(&mut self.mirror, version, max_packet) {
                        Ok(Some(packet)) => {
                            if self.version.is_none() {
                                match &packet {
                                    Packet::Connect(c) => self.version = Some(c.protocol),
                                    // The broker closes: anything else first is refused.
                                    _ => model.mirror_broken = true,
                                }
                            }
                            model.sent(&packet);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            model.mirror_broken = true;
                            break;
                        }
                    }
                    if model.mirror_broken {
                        break;
                    }
                }
                model.mirror_partial = !self.mirror.is_empty();
            }
        }
        if writer.write_all(bytes).await.is_err() {
            self.writer = None;
        }
    }

    async fn send(&mut self, packet: &Packet, corrupt: Option<(u8, u8)>, max_packet: usize) {
        let version = self.version.unwrap_or(ProtocolVersion::V5);
        let mut buf = BytesMut::new();
        if packet.encode(version, &mut buf).is_err() {
            return;
        }
        if let Some((pos, xor)) = corrupt
            && !buf.is_empty()
        {
            let i = usize::from(pos) % buf.len();
            buf[i] ^= xor;
        }
        self.write(&buf, max_packet).await;
    }

    /// Ends the connection at once, keeping what its checks found.
    fn kill(self, failures: &mut Vec<String>, slot: usize) {
        self.reader.abort();
        for f in &lock(&self.model).failures {
            failures.push(format!("client {slot} (dropped): {f}"));
        }
    }
}

/// Reads and checks everything the broker sends one client, until end of stream.
async fn read_loop(
    mut read: ReadHalf<DuplexStream>,
    model: Arc<Mutex<Model>>,
    max_inflight: usize,
    maximum_qos: u8,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut garbled = false;
    loop {
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut m = lock(&model);
        // Unknown until the broker got a CONNECT it could decode, or lost after bad output:
        // then only drain.
        let Some(version) = m.version.filter(|_| !garbled) else {
            buf.clear();
            continue;
        };
        let limit = m.max_packet.unwrap_or(usize::MAX);
        loop {
            match decode(&mut buf, version, limit) {
                Ok(Some(packet)) => m.received(&packet, max_inflight, maximum_qos),
                Ok(None) => break,
                Err(e) => {
                    m.fail(format!("undecodable output from the broker: {e}"));
                    garbled = true;
                    buf.clear();
                    break;
                }
            }
        }
    }
    let mut m = lock(&model);
    if !buf.is_empty() && m.version.is_some() {
        m.fail(format!(
            "{} bytes of a partial packet before the close",
            buf.len()
        ));
    }
    m.eof = true;
}

/// Waits until `done` holds for the model, or [`WAIT`] passes: whether it held.
async fn wait_for(model: &Mutex<Model>, done: impl Fn(&Model) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if done(&lock(model)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn s(v: &str) -> MqttStr {
    MqttStr::new(v.to_owned()).unwrap_or_else(|_| MqttStr::empty())
}

fn user() -> Vec<(MqttStr, MqttStr)> {
    vec![(s("k"), s("v"))]
}

fn connect_packet(op: &Op) -> Packet {
    let version = match op.arg(0) % 3 {
        0 => ProtocolVersion::V3_1,
        1 => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    };
    let v5 = version.is_v5();
    let flags = op.arg(2);
    let extras = op.arg(8);
    let mut c = Connect::new(
        version,
        s(CLIENT_IDS[usize::from(op.arg(1)) % CLIENT_IDS.len()]),
    );
    c.clean_start = flags & 1 != 0;
    c.keep_alive = [0, 60, 600, 1][usize::from(op.arg(3) % 4)];
    if flags & 2 != 0 {
        c.will = Some(Will {
            topic: TopicName::new("a/will").unwrap_or_else(|_| TopicName::empty()),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::from_u8((flags >> 3) & 3).unwrap_or(QoS::AtMostOnce),
            retain: flags & 4 != 0,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: [None, Some(0), Some(1)]
                        [usize::from((extras >> 3) & 3) % 3],
                    message_expiry_interval: (extras & 32 != 0).then_some(1),
                    ..WillProperties::default()
                }
            } else {
                WillProperties::default()
            },
        });
    }
    if flags & 32 != 0 {
        c.username = Some(s("user"));
    }
    if flags & 64 != 0 {
        c.password = Some(Bytes::from_static(b"secret"));
    }
    if v5 {
        c.properties = ConnectProperties {
            session_expiry_interval: [None, Some(0), Some(30), Some(u32::MAX)]
                [usize::from(op.arg(4) % 4)],
            receive_maximum: [
                None,
                NonZeroU16::new(1),
                NonZeroU16::new(2),
                NonZeroU16::new(100),
            ][usize::from(op.arg(5) % 4)],
            maximum_packet_size: [
                None,
                NonZeroU32::new(32),
                NonZeroU32::new(128),
                NonZeroU32::new(1024),
            ][usize::from(op.arg(6) % 4)],
            topic_alias_maximum: [None, Some(0), Some(1), Some(3)][usize::from(op.arg(7) % 4)],
            request_problem_information: (extras & 1 != 0).then_some(false),
            request_response_information: (extras & 2 != 0).then_some(true),
            authentication_method: (flags & 128 != 0).then(|| s("X-UNKNOWN")),
            user_properties: if extras & 4 != 0 { user() } else { Vec::new() },
            ..ConnectProperties::default()
        };
    }
    Packet::Connect(Box::new(c))
}

fn topic(i: u8) -> TopicName {
    match TOPICS[usize::from(i) % TOPICS.len()] {
        "" => TopicName::empty(),
        t => TopicName::new(t.to_owned()).unwrap_or_else(|_| TopicName::empty()),
    }
}

fn filter(i: u8) -> Option<TopicFilter> {
    TopicFilter::new(FILTERS[usize::from(i) % FILTERS.len()].to_owned()).ok()
}

fn publish_packet(op: &Op, client: &mut Client) -> Packet {
    let v5 = client.version.is_some_and(ProtocolVersion::is_v5);
    let flags = op.arg(1);
    let mut p = Publish::new(topic(op.arg(0)), Bytes::new());
    p.qos = QoS::from_u8((flags & 3) % 3).unwrap_or(QoS::AtMostOnce);
    p.retain = flags & 4 != 0;
    p.dup = flags & 8 != 0;
    if p.qos != QoS::AtMostOnce {
        p.packet_id = Some(if op.arg(2) < 128 {
            client.next_id()
        } else {
            NonZeroU16::new(u16::from(op.arg(2) % 5) + 1).unwrap_or(NonZeroU16::MIN)
        });
    }
    let payload = op.arg(3);
    p.payload = if payload & 16 != 0 {
        Bytes::from(vec![b'x'; 300])
    } else if payload & 32 != 0 {
        Bytes::from_static(b"\xff\xfe")
    } else {
        Bytes::from(vec![b'p'; usize::from(payload & 15)])
    };
    let props = op.arg(4);
    if v5 {
        p.properties = PublishProperties {
            topic_alias: NonZeroU16::new(u16::from(props & 3)),
            payload_format_indicator: (props & 4 != 0).then_some(true),
            message_expiry_interval: (props & 8 != 0).then_some(1),
            response_topic: (props & 16 != 0)
                .then(|| TopicName::new("r/t").unwrap_or_else(|_| TopicName::empty())),
            correlation_data: (props & 32 != 0).then(|| Bytes::from_static(b"c")),
            user_properties: if props & 64 != 0 { user() } else { Vec::new() },
            content_type: (props & 128 != 0).then(|| s("text/plain")),
            ..PublishProperties::default()
        };
    }
    Packet::Publish(p)
}

fn subscribe_packet(op: &Op, client: &mut Client) -> Option<Packet> {
    let meta = op.arg(0);
    let n = usize::from(meta & 3).max(1);
    let mut filters = Vec::new();
    for i in 0..n {
        let f = filter(op.arg(1 + 2 * i))?;
        let o = op.arg(2 + 2 * i);
        filters.push((
            f,
            SubscriptionOptions {
                qos: QoS::from_u8((o & 3) % 3).unwrap_or(QoS::AtMostOnce),
                no_local: o & 4 != 0,
                retain_as_published: o & 8 != 0,
                retain_handling: match (o >> 4) % 3 {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                },
            },
        ));
    }
    let v5 = client.version.is_some_and(ProtocolVersion::is_v5);
    Some(Packet::Subscribe(Subscribe {
        packet_id: if meta & 4 != 0 {
            NonZeroU16::MIN
        } else {
            client.next_id()
        },
        filters,
        properties: SubscribeProperties {
            subscription_identifier: if v5 && meta & 8 != 0 {
                SubscriptionId::new(u32::from(meta) + 1)
            } else {
                None
            },
            user_properties: if v5 && meta & 16 != 0 {
                user()
            } else {
                Vec::new()
            },
        },
    }))
}

/// The packet a well-behaved client sends next for the broker's message with `id`.
fn next_step(id: u16, stage: Stage, error: bool, v5: bool) -> Option<Packet> {
    let mut r = PubResponse::new(NonZeroU16::new(id)?);
    if v5 && error {
        r.reason = ReasonCode::UnspecifiedError;
    }
    match stage {
        Stage::Qos1 => Some(Packet::PubAck(r)),
        Stage::Qos2 => Some(Packet::PubRec(r)),
        Stage::Received => None,
        Stage::Released => {
            r.reason = ReasonCode::Success;
            Some(Packet::PubComp(r))
        }
    }
}

async fn run_op(env: &mut Env, clients: &mut [Option<Client>], op: &Op) {
    let max_packet = env.max_packet;
    let slot = op.slot;
    if op.kind == Kind::Connect {
        if let Some(old) = clients[slot].take() {
            old.kill(&mut env.failures, slot);
        }
        clients[slot] = Client::open(env, slot);
        if let Some(c) = clients[slot].as_mut() {
            c.send(&connect_packet(op), op.corrupt, max_packet).await;
        }
        return;
    }
    if op.kind == Kind::BrokerPublish {
        let topic = topic(op.arg(0));
        if !topic.is_empty() {
            let qos = QoS::from_u8((op.arg(1) & 3) % 3).unwrap_or(QoS::AtMostOnce);
            env.broker
                .publish(topic, Bytes::from_static(b"b"), qos, op.arg(1) & 4 != 0);
        }
        return;
    }
    if op.kind == Kind::Yield {
        let n = op.arg(0);
        if n & 0xC0 == 0xC0 {
            tokio::time::sleep(Duration::from_millis(u64::from(n % 8))).await;
        } else {
            for _ in 0..n % 64 {
                tokio::task::yield_now().await;
            }
        }
        return;
    }
    if op.kind == Kind::Kill {
        if let Some(c) = clients[slot].take() {
            c.kill(&mut env.failures, slot);
        }
        return;
    }
    let Some(client) = clients[slot].as_mut() else {
        return;
    };
    let v5 = client.version.is_some_and(ProtocolVersion::is_v5);
    let packets: Vec<Packet> = match op.kind {
        Kind::Publish => vec![publish_packet(op, client)],
        Kind::Subscribe => subscribe_packet(op, client).into_iter().collect(),
        Kind::Unsubscribe => {
            let meta = op.arg(0);
            let n = if meta & 1 != 0 { 2 } else { 1 };
            let filters: Vec<TopicFilter> = (0..n).filter_map(|i| filter(op.arg(1 + i))).collect();
            vec![Packet::Unsubscribe(Unsubscribe {
                packet_id: if meta & 4 != 0 {
                    NonZeroU16::MIN
                } else {
                    client.next_id()
                },
                filters,
                properties: UnsubscribeProperties::default(),
            })]
        }
        Kind::Ack | Kind::AckAll => {
            let m = lock(&client.model);
            let steps: Vec<(u16, Stage)> = m
                .in_flight
                .iter()
                .map(|(id, stage)| (*id, *stage))
                .collect();
            drop(m);
            let which = op.arg(0);
            let chosen: Vec<(u16, Stage)> = if op.kind == Kind::AckAll {
                steps
            } else if steps.is_empty() {
                Vec::new()
            } else {
                vec![steps[usize::from(which & 0x7F) % steps.len()]]
            };
            chosen
                .into_iter()
                .filter_map(|(id, stage)| next_step(id, stage, which & 0x80 != 0, v5))
                .collect()
        }
        Kind::StrayAck => {
            let Some(id) = NonZeroU16::new(u16::from(op.arg(1) % 8) + 1) else {
                return;
            };
            let r = PubResponse::new(id);
            vec![match op.arg(0) % 4 {
                0 => Packet::PubAck(r),
                1 => Packet::PubRec(r),
                2 => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }]
        }
        Kind::PubRel => {
            let recorded = lock(&client.model).recorded.clone();
            let id = if recorded.is_empty() {
                1
            } else {
                recorded[usize::from(op.arg(0)) % recorded.len()]
            };
            let Some(id) = NonZeroU16::new(id) else {
                return;
            };
            vec![Packet::PubRel(PubResponse::new(id))]
        }
        Kind::PingReq => vec![Packet::PingReq],
        Kind::Disconnect => {
            let mut d = Disconnect::new(
                [
                    ReasonCode::Success,
                    ReasonCode::DisconnectWithWill,
                    ReasonCode::UnspecifiedError,
                ][usize::from(op.arg(0) % 3)],
            );
            if v5 {
                d.properties = DisconnectProperties {
                    session_expiry_interval: [None, Some(0), Some(60)][usize::from(op.arg(1) % 3)],
                    ..DisconnectProperties::default()
                };
            } else {
                d.reason = ReasonCode::Success;
            }
            vec![Packet::Disconnect(d)]
        }
        Kind::Auth => vec![Packet::Auth(Auth {
            reason: if op.arg(0) & 1 != 0 {
                ReasonCode::ReAuthenticate
            } else {
                ReasonCode::ContinueAuthentication
            },
            properties: AuthProperties {
                authentication_method: Some(s("X-UNKNOWN")),
                authentication_data: Some(Bytes::from_static(b"d")),
                ..AuthProperties::default()
            },
        })],
        Kind::Raw => {
            client.write(&op.data, max_packet).await;
            return;
        }
        Kind::Close => {
            if let Some(mut w) = client.writer.take() {
                let _ = w.shutdown().await;
            }
            return;
        }
        Kind::Connect | Kind::BrokerPublish | Kind::Yield | Kind::Kill => return,
    };
    for packet in packets {
        client.send(&packet, op.corrupt, max_packet).await;
    }
}

/// The end of a script for one client: PINGREQ answered (if the connection should still be
/// up), then the client closes and the broker must close too.
async fn finish(client: Client, failures: &mut Vec<String>, slot: usize) {
    let Client {
        writer,
        reader,
        model,
        ..
    } = client;
    if let Some(mut writer) = writer {
        let expect_answer = {
            let m = lock(&model);
            !m.mirror_broken
                && !m.mirror_partial
                && !m.disconnect_sent
                && !m.eof
                && m.version.is_some()
                && m.connack.is_none_or(|r| !r.is_error())
        };
        if expect_answer {
            let mut ping = BytesMut::new();
            let _ = Packet::PingReq.encode(ProtocolVersion::V3_1_1, &mut ping);
            let pings = {
                let mut m = lock(&model);
                m.pings += 1;
                m.pings
            };
            if writer.write_all(&ping).await.is_ok()
                && !wait_for(&model, |m| m.pongs >= pings || m.eof).await
            {
                failures.push(format!(
                    "client {slot}: no PINGRESP and no close within {WAIT:?}"
                ));
            }
        }
        let _ = writer.shutdown().await;
        if !wait_for(&model, |m| m.eof).await {
            failures.push(format!(
                "client {slot}: the broker did not close within {WAIT:?} of the client's end of stream"
            ));
        }
        drop(writer);
    }
    if !wait_for(&model, |m| m.eof).await {
        failures.push(format!("client {slot}: the connection did not end"));
    }
    reader.abort();
    let m = lock(&model);
    for f in &m.failures {
        failures.push(format!("client {slot}: {f}"));
    }
}

/// A well-behaved client: connects, subscribes, publishes at QoS 1 and gets its message.
async fn probe(env: &mut Env, v5: bool) -> Result<(), String> {
    let (mut ours, theirs) = tokio::io::duplex(4096);
    if !env
        .broker
        .serve_stream(theirs, SocketAddr::from(([127, 0, 0, 3], 1)))
    {
        return Err("the broker refused the probe's connection".to_owned());
    }
    let version = if v5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V3_1_1
    };
    let id = NonZeroU16::MIN;
    let t = TopicName::new("probe/t").map_err(|e| e.to_string())?;
    let f = TopicFilter::new("probe/#").map_err(|e| e.to_string())?;
    let mut c = Connect::new(version, s("fuzz-probe"));
    c.keep_alive = 60;
    let mut publish = Publish::new(t.clone(), Bytes::from_static(b"alive"));
    publish.qos = QoS::AtLeastOnce;
    publish.packet_id = Some(id);
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: id,
        filters: vec![(f, SubscriptionOptions::new(QoS::AtLeastOnce))],
        properties: SubscribeProperties::default(),
    });
    let talk = async {
        let mut out = BytesMut::new();
        let mut rx = BytesMut::new();
        let encode =
            |p: Packet, out: &mut BytesMut| p.encode(version, out).map_err(|e| e.to_string());
        encode(Packet::Connect(Box::new(c)), &mut out)?;
        encode(subscribe, &mut out)?;
        let (mut connected, mut subscribed, mut acked, mut received) = (false, false, false, false);
        loop {
            if !out.is_empty() {
                ours.write_all(&out).await.map_err(|e| e.to_string())?;
                out.clear();
            }
            if connected && subscribed && acked && received {
                encode(Packet::Disconnect(Disconnect::default()), &mut out)?;
                ours.write_all(&out).await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            if ours.read_buf(&mut rx).await.map_err(|e| e.to_string())? == 0 {
                return Err(format!(
                    "the broker closed the probe (connected {connected}, subscribed {subscribed}, \
                     acked {acked}, received {received})"
                ));
            }
            while let Some(p) = decode(&mut rx, version, usize::MAX).map_err(|e| e.to_string())? {
                match p {
                    Packet::ConnAck(c) if !connected && c.reason.is_success() => connected = true,
                    Packet::SubAck(a)
                        if connected && a.reasons.first().is_some_and(|r| !r.is_error()) =>
                    {
                        subscribed = true;
                        encode(Packet::Publish(publish.clone()), &mut out)?;
                    }
                    Packet::PubAck(a) if subscribed && a.packet_id == id => acked = true,
                    Packet::Publish(m) if subscribed && m.topic == t && !received => {
                        received = true;
                        if let Some(pid) = m.packet_id {
                            encode(Packet::PubAck(PubResponse::new(pid)), &mut out)?;
                        }
                    }
                    p => return Err(format!("unexpected {p:?}")),
                }
            }
        }
    };
    match tokio::time::timeout(WAIT, talk).await {
        Ok(r) => r,
        Err(_) => Err(format!("the probe got no answer within {WAIT:?}")),
    }
}

/// Runs a script against a fresh broker: the broken properties, if any.
async fn run(script: &Script) -> Vec<String> {
    let tight = script.settings & 1 != 0;
    let config = broker_config(tight);
    let (max_packet, max_inflight, maximum_qos) = (
        config.max_packet_size as usize,
        usize::from(config.max_inflight),
        config.maximum_qos,
    );
    let broker = match Broker::start(config).await {
        Ok(b) => b,
        Err(e) => return vec![format!("the broker did not start: {e}")],
    };
    let mut env = Env {
        broker,
        max_packet,
        max_inflight,
        maximum_qos,
        buffer: if script.settings & 2 != 0 { 64 } else { 4096 },
        next_port: 0,
        failures: Vec::new(),
    };
    let mut clients: Vec<Option<Client>> = (0..SLOTS).map(|_| None).collect();
    let ops = async {
        for op in &script.ops {
            run_op(&mut env, &mut clients, op).await;
        }
    };
    let timed_out = tokio::time::timeout(WAIT, ops).await.is_err();
    let mut failures = std::mem::take(&mut env.failures);
    if timed_out {
        failures.push(format!("the script did not finish within {WAIT:?}"));
    }
    for (slot, client) in clients.into_iter().enumerate() {
        if let Some(client) = client {
            finish(client, &mut failures, slot).await;
        }
    }
    if let Err(e) = probe(&mut env, script.settings & 4 == 0).await {
        failures.push(format!("probe: {e}"));
    }
    if tokio::time::timeout(WAIT, env.broker.shutdown())
        .await
        .is_err()
    {
        failures.push(format!("the broker did not shut down within {WAIT:?}"));
    }
    failures
}
