//! The event loop: one task that owns the socket.
//!
//! It reads into a buffer and decodes every complete packet; encodes everything it has to
//! send into one write buffer and writes it in one call per batch; sends pings and watches
//! for their answers; drives the QoS flows with the shared session state of
//! `sagitta_proto::session`; runs the callbacks; and reconnects with backoff, sending again
//! what is unacknowledged.
//!
//! Session state (in-flight window, inbound QoS 2 ids, pending SUBSCRIBE/UNSUBSCRIBE,
//! subscriptions) lives in [`EventLoop`] and survives reconnects; connection state (socket,
//! buffers, keep-alive clock, topic aliases, the broker's limits) lives in [`Conn`].

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rand::Rng;
use sagitta_proto::session::{
    FlowError, InboundAliases, InboundQos2, OutboundAlias, OutboundAliases, OutboundWindow,
    PubRecOutcome, Qos2Publish, Stage, client_ping_due,
};
use sagitta_proto::{
    Disconnect, MqttStr, Packet, PacketId, PacketType, ProtocolVersion, PubResponse, Publish, QoS,
    ReasonCode, SubAck, Subscribe, SubscribeProperties, SubscriptionOptions, TopicFilter,
    TopicName, UnsubAck, Unsubscribe, decode,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Limits, Shared, State, check_size};
use crate::connect::{Established, READ_CHUNK, establish};
use crate::error::{ClientError, ProtocolError, ReasonString};
use crate::message::{Ack, Delivered, Message};
use crate::options::{Callback, Options};
use crate::transport::{Reader, Writer};

/// Stop taking requests while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Requests taken from the queue in one go before writing.
const BATCH: usize = 256;
/// Buffers larger than this are given back once empty.
const SHRINK_ABOVE: usize = 1024 * 1024;
/// Time allowed to flush the DISCONNECT and see the broker close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The same after a protocol error: the broker owes us nothing.
const ABORT_TIMEOUT: Duration = Duration::from_millis(500);

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A request from a [`crate::Client`] handle.
pub(crate) enum Request {
    Publish(PublishRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(UnsubscribeRequest),
    Disconnect(DisconnectRequest),
    /// A manual acknowledgement.
    Ack(Ack),
}

pub(crate) struct PublishRequest {
    /// Without packet id; the full topic.
    pub publish: Publish,
    /// `None` for QoS 0.
    pub done: Option<Reply<()>>,
}

pub(crate) struct SubscribeRequest {
    pub packet: Subscribe,
    pub callback: Option<Callback>,
    pub done: Reply<SubAck>,
}

pub(crate) struct UnsubscribeRequest {
    pub packet: Unsubscribe,
    pub done: Reply<UnsubAck>,
}

pub(crate) struct DisconnectRequest {
    pub packet: Disconnect,
    pub done: Reply<()>,
}

impl Request {
    fn fail(self, error: &ClientError) {
        match self {
            Request::Publish(r) => reply(r.done, Err(error.clone())),
            Request::Subscribe(r) => reply(Some(r.done), Err(error.clone())),
            Request::Unsubscribe(r) => reply(Some(r.done), Err(error.clone())),
            // The client is closing anyway: that is what was asked.
            Request::Disconnect(r) => reply(Some(r.done), Ok(())),
            Request::Ack(_) => {}
        }
    }
}

fn reply<T>(done: Option<Reply<T>>, result: Result<T, ClientError>) {
    if let Some(done) = done {
        // The caller may have stopped waiting; nothing to do then.
        let _ = done.send(result);
    }
}

/// A QoS 1/2 message in the outbound window.
struct InFlight {
    /// Without packet id, with its full topic (aliases are per connection).
    publish: Publish,
    done: Option<Reply<()>>,
}

/// A SUBSCRIBE or UNSUBSCRIBE waiting for its acknowledgement, kept to be sent again after a
/// reconnect.
enum PendingAck {
    Subscribe {
        packet: Subscribe,
        callback: Option<Callback>,
        /// `None` when restoring a subscription after the broker lost the session.
        done: Option<Reply<SubAck>>,
    },
    Unsubscribe {
        packet: Unsubscribe,
        done: Reply<UnsubAck>,
    },
}

impl PendingAck {
    fn packet(&self) -> Packet {
        match self {
            PendingAck::Subscribe { packet, .. } => Packet::Subscribe(packet.clone()),
            PendingAck::Unsubscribe { packet, .. } => Packet::Unsubscribe(packet.clone()),
        }
    }

    fn set_packet_id(&mut self, id: PacketId) {
        match self {
            PendingAck::Subscribe { packet, .. } => packet.packet_id = id,
            PendingAck::Unsubscribe { packet, .. } => packet.packet_id = id,
        }
    }

    fn is_restore(&self) -> bool {
        matches!(self, PendingAck::Subscribe { done: None, .. })
    }

    fn fail(self, error: &ClientError) {
        match self {
            PendingAck::Subscribe { done, .. } => reply(done, Err(error.clone())),
            PendingAck::Unsubscribe { done, .. } => reply(Some(done), Err(error.clone())),
        }
    }

    /// Back to a request, to wait in the backlog (`None` for a restore, which is dropped).
    fn into_request(self) -> Option<Request> {
        match self {
            PendingAck::Subscribe {
                packet,
                callback,
                done: Some(done),
            } => Some(Request::Subscribe(SubscribeRequest {
                packet,
                callback,
                done,
            })),
            PendingAck::Subscribe { done: None, .. } => None,
            PendingAck::Unsubscribe { packet, done } => {
                Some(Request::Unsubscribe(UnsubscribeRequest { packet, done }))
            }
        }
    }
}

/// An active subscription: where its messages go, and what to send to restore it.
struct SubEntry {
    filter: TopicFilter,
    options: SubscriptionOptions,
    properties: SubscribeProperties,
    callback: Option<Callback>,
}

/// A received message waiting for room in the `recv()` queue; reading stops meanwhile.
struct Paused {
    message: Delivered,
    /// The acknowledgement to send once delivered; dropped if the connection ends first (the
    /// broker then sends the message again, and QoS 2 de-duplication still holds).
    ack: Option<Packet>,
}

/// How a connection ended.
enum End {
    /// Closed on purpose: a disconnect request (with its reply) or every handle dropped.
    Closed(Option<Reply<()>>),
    /// Lost: reconnect if the policy says so.
    Lost(ClientError),
}

/// Why input processing stops the connection.
enum Stop {
    /// The broker broke the protocol: send DISCONNECT with its reason (5.0) and close.
    Protocol(ProtocolError),
    /// The connection ends with this error (the broker sent DISCONNECT...).
    End(ClientError),
}

/// What handling a request led to.
enum Flow {
    Continue,
    /// No room (window full, no packet id): the request waits at the front of the backlog.
    Stalled(Request),
    Disconnect(DisconnectRequest),
}

/// Per-connection state.
struct Conn {
    version: ProtocolVersion,
    rd: Reader,
    wr: Writer,
    rbuf: BytesMut,
    wbuf: BytesMut,
    keep_alive: u16,
    ping_timeout: Duration,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    /// The timer deadline when keep-alive is off.
    never: Instant,
    limits: Limits,
    out_aliases: Option<OutboundAliases>,
    in_aliases: InboundAliases,
}

impl Conn {
    /// Appends `packet` to the write buffer.
    fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        packet.encode(self.version, &mut self.wbuf)?;
        Ok(())
    }

    /// Appends a PUBLISH (with its packet id set), using a topic alias when allowed.
    fn queue_publish(&mut self, mut publish: Publish) -> Result<(), ClientError> {
        if let Some(aliases) = self.out_aliases.as_mut() {
            match aliases.assign(&publish.topic) {
                OutboundAlias::None => {}
                OutboundAlias::Set(alias) => publish.properties.topic_alias = Some(alias),
                OutboundAlias::Use(alias) => {
                    publish.properties.topic_alias = Some(alias);
                    publish.topic = TopicName::empty();
                }
            }
        }
        self.queue(&Packet::Publish(publish))
    }

    /// When the keep-alive timer must fire next.
    fn deadline(&self) -> Instant {
        match self.ping_sent {
            Some(sent) => sent.checked_add(self.ping_timeout).unwrap_or(self.never),
            None => client_ping_due(self.last_sent.into_std(), self.keep_alive)
                .map_or(self.never, Instant::from_std),
        }
    }

    fn after_write(&mut self) {
        self.last_sent = Instant::now();
        if self.wbuf.is_empty() && self.wbuf.capacity() > SHRINK_ABOVE {
            self.wbuf = BytesMut::new();
        }
    }

    fn before_read(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > SHRINK_ABOVE {
            self.rbuf = BytesMut::new();
        }
        self.rbuf.reserve(READ_CHUNK);
    }

    /// Writes out what is buffered, half-closes, and reads until the broker closes, so that
    /// unread input does not turn our close into a reset that could lose the tail.
    async fn close(mut self, limit: Duration) {
        let flush = async {
            self.wr.finish(&self.wbuf).await?;
            loop {
                self.rbuf.clear();
                self.rbuf.reserve(READ_CHUNK);
                if self.rd.read_buf(&mut self.rbuf).await? == 0 {
                    return Ok::<(), std::io::Error>(());
                }
            }
        };
        match tokio::time::timeout(limit, flush).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "error while closing the connection"),
            Err(_) => tracing::debug!("the broker did not close the connection in time"),
        }
    }
}

/// The event loop task's state.
pub(crate) struct EventLoop {
    opts: Options,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    msg_tx: mpsc::Sender<Delivered>,
    shutdown: CancellationToken,
    client_id: MqttStr,
    window: OutboundWindow<InFlight>,
    inbound_qos2: InboundQos2,
    /// Unacknowledged SUBSCRIBE/UNSUBSCRIBE by packet id, in send order.
    acks: Vec<(u16, PendingAck)>,
    subs: Vec<SubEntry>,
    /// Requests to handle before new ones: a stalled one, or publishes to send again.
    backlog: VecDeque<Request>,
    paused: Option<Paused>,
    /// Connections opened so far (`Client::connect` records the first one's status).
    opened: u32,
}

impl EventLoop {
    pub(crate) fn new(
        opts: Options,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Request>,
        msg_tx: mpsc::Sender<Delivered>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            client_id: opts.connect.client_id.clone(),
            opts,
            shared,
            rx,
            msg_tx,
            shutdown,
            window: OutboundWindow::new(u16::MAX),
            inbound_qos2: InboundQos2::new(),
            acks: Vec::new(),
            subs: Vec::new(),
            backlog: VecDeque::new(),
            paused: None,
            opened: 0,
        }
    }

    /// Runs until the client is closed.
    pub(crate) async fn run(mut self, first: Established) {
        let mut established = first;
        loop {
            match self.run_connection(established).await {
                End::Closed(done) => {
                    self.finish(None);
                    reply(done, Ok(()));
                    tracing::info!("disconnected");
                    return;
                }
                End::Lost(error) => {
                    tracing::warn!(%error, "connection lost");
                    if let Some(paused) = self.paused.as_mut() {
                        paused.ack = None;
                    }
                    if self.shutdown.is_cancelled() {
                        self.finish(None);
                        return;
                    }
                    let taken_over = matches!(
                        error,
                        ClientError::DisconnectedByServer {
                            reason: ReasonCode::SessionTakenOver,
                            ..
                        }
                    );
                    if !self.opts.reconnect.is_enabled() || taken_over {
                        self.finish(Some(error));
                        return;
                    }
                    self.shared.status.send_modify(|s| {
                        s.state = State::Reconnecting;
                        s.last_error = Some(error);
                    });
                    match self.reconnect().await {
                        Some(next) => established = next,
                        None => return,
                    }
                }
            }
        }
    }

    /// Connects again with backoff until it works, fails for good, or the client is closed.
    /// `None` means the client is finished.
    async fn reconnect(&mut self) -> Option<Established> {
        let mut connect = self.opts.connect.clone();
        connect.client_id = self.client_id.clone();
        if self.opts.persistent {
            connect.clean_start = false;
        }
        let mut failed = 0u32;
        loop {
            let delay = self
                .opts
                .reconnect
                .delay(failed, rand::rng().random::<f64>());
            tracing::debug!(?delay, attempt = failed + 1, "reconnecting");
            let result = tokio::select! {
                () = self.shutdown.cancelled() => None,
                result = async {
                    tokio::time::sleep(delay).await;
                    establish(&self.opts, &connect).await
                } => Some(result),
            };
            match result {
                None => {
                    self.finish(None);
                    return None;
                }
                Some(Ok(established)) => {
                    tracing::info!(
                        session_present = established.connack.session_present,
                        "reconnected"
                    );
                    return Some(established);
                }
                Some(Err(e)) => {
                    failed = failed.saturating_add(1);
                    tracing::warn!(error = %e, attempt = failed, "reconnect failed");
                    if e.is_fatal() || self.opts.reconnect.exhausted(failed) {
                        self.finish(Some(ClientError::Reconnect(e)));
                        return None;
                    }
                }
            }
        }
    }

    /// Ends the client: status Closed, every pending request failed.
    fn finish(&mut self, error: Option<ClientError>) {
        let failure = error.clone().unwrap_or(ClientError::Closed);
        self.shared.status.send_modify(|s| {
            s.state = State::Closed;
            s.last_error = error;
        });
        self.rx.close();
        for (_, _, item) in self.window.drain() {
            reply(item.done, Err(failure.clone()));
        }
        for (_, ack) in self.acks.drain(..) {
            ack.fail(&failure);
        }
        for request in self.backlog.drain(..) {
            request.fail(&failure);
        }
        while let Ok(request) = self.rx.try_recv() {
            request.fail(&failure);
        }
        self.paused = None;
    }

    /// Sets up a new connection: its limits, and what the session needs sent again.
    fn open(&mut self, established: Established) -> Result<Conn, ClientError> {
        let Established {
            stream,
            rbuf,
            connack,
        } = established;
        let props = &connack.properties;
        if let Some(id) = &props.assigned_client_identifier {
            self.client_id = id.clone();
        }
        let keep_alive = props
            .server_keep_alive
            .unwrap_or(self.opts.connect.keep_alive);
        let receive_maximum = props.receive_maximum.map_or(u16::MAX, |m| m.get());
        self.window
            .set_limit(receive_maximum.min(self.opts.max_inflight));
        let alias_max = props.topic_alias_maximum.unwrap_or(0);
        if self.opened > 0 {
            self.shared.connected(&connack);
        }
        self.opened = self.opened.saturating_add(1);
        let now = Instant::now();
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            version: self.opts.version(),
            rd,
            wr,
            rbuf,
            wbuf: BytesMut::new(),
            keep_alive,
            ping_timeout: self.opts.ping_timeout_for(keep_alive),
            last_sent: now,
            ping_sent: None,
            never: now + Duration::from_secs(365 * 86_400),
            limits: Limits::from_connack(&connack),
            out_aliases: (self.opts.topic_aliases && alias_max > 0)
                .then(|| OutboundAliases::new(alias_max)),
            in_aliases: InboundAliases::new(self.opts.inbound_topic_aliases),
        };
        if connack.session_present {
            self.resume(&mut conn)?;
        } else {
            self.restart(&mut conn)?;
        }
        Ok(conn)
    }

    /// The broker kept the session: send unacknowledged PUBLISHes again with DUP, and
    /// PUBRELs, in their original order [MQTT-4.4.0-1]; then pending SUBSCRIBE/UNSUBSCRIBE.
    fn resume(&mut self, conn: &mut Conn) -> Result<(), ClientError> {
        let mut resent = 0usize;
        for (id, stage, item) in self.window.resend() {
            match stage {
                Stage::AwaitingPubAck | Stage::AwaitingPubRec => {
                    let mut publish = item.publish.clone();
                    publish.packet_id = Some(id);
                    publish.dup = true;
                    conn.queue_publish(publish)?;
                }
                Stage::AwaitingPubComp => conn.queue(&Packet::PubRel(PubResponse::new(id)))?,
            }
            resent += 1;
        }
        if resent > 0 {
            tracing::info!(count = resent, "resending unacknowledged messages");
        }
        for (_, ack) in &self.acks {
            conn.queue(&ack.packet())?;
        }
        Ok(())
    }

    /// The broker has no session for us (first connection, clean start, or it lost it):
    /// forget inbound QoS 2 ids, restore subscriptions, send pending SUBSCRIBE/UNSUBSCRIBE
    /// again, and publish every unacknowledged message again as a new one, a QoS 2 message
    /// already PUBREC'd included: a broker may deliver QoS 2 only on PUBREL (Mosquitto does),
    /// and one that lost the session lost such a message with it. Not losing it costs a
    /// possible duplicate when the broker had delivered it already.
    fn restart(&mut self, conn: &mut Conn) -> Result<(), ClientError> {
        self.inbound_qos2.clear();
        // Restores of a previous connection that never got their SUBACK are replaced.
        self.acks.retain(|(_, ack)| !ack.is_restore());
        for (_, ack) in &self.acks {
            conn.queue(&ack.packet())?;
        }
        for sub in &self.subs {
            let acks = &self.acks;
            let Some(id) = self
                .window
                .allocate_id(|id| acks.iter().any(|(a, _)| *a == id.get()))
            else {
                break;
            };
            let packet = Subscribe {
                packet_id: id,
                filters: vec![(sub.filter.clone(), sub.options)],
                properties: sub.properties.clone(),
            };
            conn.queue(&Packet::Subscribe(packet.clone()))?;
            self.acks.push((
                id.get(),
                PendingAck::Subscribe {
                    packet,
                    callback: sub.callback.clone(),
                    done: None,
                },
            ));
        }
        if !self.subs.is_empty() {
            tracing::info!(count = self.subs.len(), "restoring subscriptions");
        }
        let mut again = VecDeque::new();
        for (_, _, item) in self.window.drain() {
            again.push_back(Request::Publish(PublishRequest {
                publish: item.publish,
                done: item.done,
            }));
        }
        if !again.is_empty() {
            tracing::info!(
                count = again.len(),
                "publishing unacknowledged messages again"
            );
            again.extend(self.backlog.drain(..));
            self.backlog = again;
        }
        Ok(())
    }

    /// Serves one connection until it ends.
    async fn run_connection(&mut self, established: Established) -> End {
        let mut conn = match self.open(established) {
            Ok(conn) => conn,
            Err(e) => return End::Lost(e),
        };
        let mut deadline = conn.deadline();
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        // Set when the client is closing (disconnect called, or every handle dropped): the
        // DISCONNECT request comes in order behind what was queued before it, but if acks
        // never come to free the window, the connection is closed at this instant anyway.
        let mut give_up_at: Option<Instant> = None;
        let shutdown = self.shutdown.clone();
        loop {
            if self.paused.is_none() {
                match self.process_input(&mut conn) {
                    Ok(()) => {}
                    Err(Stop::End(e)) => return End::Lost(e),
                    Err(Stop::Protocol(e)) => return self.abort(conn, e).await,
                }
            }
            // Everything that can be done without waiting, then one write for all of it.
            let taken = match self.drain_backlog(&mut conn) {
                Ok(None) => self.take_queued(&mut conn),
                other => other,
            };
            match taken {
                Ok(None) => {}
                Ok(Some(d)) => return self.close(conn, d.packet, Some(d.done)).await,
                Err(e) => return End::Lost(e),
            }
            if conn.wr.has_pending(&conn.wbuf) {
                match conn.wr.try_write(&mut conn.wbuf) {
                    Ok(true) => conn.after_write(),
                    Ok(false) => {}
                    Err(e) => return End::Lost(ClientError::io(e)),
                }
            }
            let accepting = self.backlog.is_empty() && conn.wbuf.len() < WRITE_HIGH_WATER;
            // The ping deadline only moves later as we write, so the timer is reset only when
            // it must fire sooner or has fired: no timer update per write.
            let next = give_up_at.map_or(conn.deadline(), |g| g.min(conn.deadline()));
            if next < deadline || (next != deadline && sleep.is_elapsed()) {
                deadline = next;
                sleep.as_mut().reset(deadline);
            }
            if self.paused.is_none() {
                conn.before_read();
            }
            tokio::select! {
                read = conn.rd.read_buf(&mut conn.rbuf), if self.paused.is_none() => match read {
                    Ok(0) => return End::Lost(ClientError::ConnectionClosed),
                    Ok(_) => {}
                    Err(e) => return End::Lost(ClientError::io(e)),
                },
                written = conn.wr.write(&mut conn.wbuf), if conn.wr.has_pending(&conn.wbuf) => {
                    match written {
                        Ok(_) => conn.after_write(),
                        Err(e) => return End::Lost(ClientError::io(e)),
                    }
                }
                // Only this task sends on the queue: once a slot is free, `try_send` gets it.
                room = async { self.msg_tx.reserve().await.map(drop) }, if self.paused.is_some() => {
                    if let Some(paused) = self.paused.take() {
                        if room.is_err() || self.msg_tx.try_send(paused.message).is_err() {
                            tracing::debug!("message queue closed; message dropped");
                        }
                        if let Some(ack) = paused.ack
                            && let Err(e) = conn.queue(&ack) {
                                return End::Lost(e);
                            }
                    }
                }
                request = self.rx.recv(), if accepting => {
                    let Some(request) = request else {
                        // Every handle is gone.
                        return self.close(conn, Disconnect::default(), None).await;
                    };
                    match self.take_requests(&mut conn, request) {
                        Ok(None) => {}
                        Ok(Some(d)) => return self.close(conn, d.packet, Some(d.done)).await,
                        Err(e) => return End::Lost(e),
                    }
                }
                () = shutdown.cancelled(), if give_up_at.is_none() => {
                    give_up_at = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                () = &mut sleep => {
                    if give_up_at.is_some_and(|g| Instant::now() >= g) {
                        tracing::warn!("closing without waiting further for acknowledgements");
                        return self.close(conn, Disconnect::default(), None).await;
                    }
                    if let Err(e) = self.on_timer(&mut conn) {
                        return End::Lost(e);
                    }
                }
            }
        }
    }

    /// Handles `first` and whatever else is queued, up to a batch, so that one write carries
    /// them all.
    fn take_requests(
        &mut self,
        conn: &mut Conn,
        first: Request,
    ) -> Result<Option<DisconnectRequest>, ClientError> {
        match self.handle_request(conn, first)? {
            Flow::Continue => self.take_queued(conn),
            Flow::Stalled(request) => {
                self.backlog.push_front(request);
                Ok(None)
            }
            Flow::Disconnect(d) => Ok(Some(d)),
        }
    }

    /// Handles one request; one without room goes back to the front of the backlog. Breaks
    /// when no more should be taken now: `Some` to disconnect.
    fn handle_or_backlog(
        &mut self,
        conn: &mut Conn,
        request: Request,
    ) -> Result<ControlFlow<Option<DisconnectRequest>>, ClientError> {
        Ok(match self.handle_request(conn, request)? {
            Flow::Continue => ControlFlow::Continue(()),
            Flow::Stalled(request) => {
                self.backlog.push_front(request);
                ControlFlow::Break(None)
            }
            Flow::Disconnect(d) => ControlFlow::Break(Some(d)),
        })
    }

    /// Handles requests already queued, without waiting, while there is room.
    fn take_queued(&mut self, conn: &mut Conn) -> Result<Option<DisconnectRequest>, ClientError> {
        let mut taken = 0;
        while taken < BATCH && self.backlog.is_empty() && conn.wbuf.len() < WRITE_HIGH_WATER {
            // Empty or closed: the select below waits, or sees the close.
            let Ok(request) = self.rx.try_recv() else {
                break;
            };
            if let ControlFlow::Break(end) = self.handle_or_backlog(conn, request)? {
                return Ok(end);
            }
            taken += 1;
        }
        Ok(None)
    }

    /// Handles backlogged requests while there is room.
    fn drain_backlog(&mut self, conn: &mut Conn) -> Result<Option<DisconnectRequest>, ClientError> {
        while conn.wbuf.len() < WRITE_HIGH_WATER {
            let Some(request) = self.backlog.pop_front() else {
                break;
            };
            if let ControlFlow::Break(end) = self.handle_or_backlog(conn, request)? {
                return Ok(end);
            }
        }
        Ok(None)
    }

    /// Encodes one request. An error here ends the connection (a packet could not be
    /// encoded into the write buffer); a request's own problems are answered to its caller.
    fn handle_request(&mut self, conn: &mut Conn, request: Request) -> Result<Flow, ClientError> {
        match request {
            Request::Publish(r) => self.start_publish(conn, r),
            Request::Subscribe(r) => self.start_ack(
                conn,
                PendingAck::Subscribe {
                    packet: r.packet,
                    callback: r.callback,
                    done: Some(r.done),
                },
            ),
            Request::Unsubscribe(r) => self.start_ack(
                conn,
                PendingAck::Unsubscribe {
                    packet: r.packet,
                    done: r.done,
                },
            ),
            Request::Disconnect(d) => Ok(Flow::Disconnect(d)),
            Request::Ack(ack) => {
                // One of an earlier connection: the broker sends that message again.
                if ack.connection == self.opened {
                    conn.queue(&ack.packet)?;
                }
                Ok(Flow::Continue)
            }
        }
    }

    fn start_publish(&mut self, conn: &mut Conn, r: PublishRequest) -> Result<Flow, ClientError> {
        if let Err(e) = conn.limits.check(&r.publish, conn.version) {
            tracing::warn!(topic = %r.publish.topic, error = %e, "publish not sent");
            reply(r.done, Err(e));
            return Ok(Flow::Continue);
        }
        let qos = r.publish.qos;
        if qos == QoS::AtMostOnce {
            conn.queue_publish(r.publish)?;
            reply(r.done, Ok(()));
            return Ok(Flow::Continue);
        }
        // Ids in flight and ids of pending SUBSCRIBE/UNSUBSCRIBE are disjoint: this says
        // whether a free id exists.
        let ids_used = self.window.len() + self.acks.len();
        if self.window.is_full() || ids_used >= usize::from(u16::MAX) {
            return Ok(Flow::Stalled(Request::Publish(r)));
        }
        let mut publish = r.publish.clone();
        let acks = &self.acks;
        let item = InFlight {
            publish: r.publish,
            done: r.done,
        };
        let id = match self
            .window
            .insert_avoiding(qos, item, |id| acks.iter().any(|(a, _)| *a == id.get()))
        {
            Ok(id) => id,
            Err(e) => {
                // Not reachable after the checks above; the caller sees the client closed.
                tracing::error!(error = %e, "no packet id for a publish");
                return Ok(Flow::Continue);
            }
        };
        publish.packet_id = Some(id);
        conn.queue_publish(publish)?;
        Ok(Flow::Continue)
    }

    fn start_ack(&mut self, conn: &mut Conn, mut pending: PendingAck) -> Result<Flow, ClientError> {
        let acks = &self.acks;
        let Some(id) = self
            .window
            .allocate_id(|id| acks.iter().any(|(a, _)| *a == id.get()))
        else {
            return Ok(match pending.into_request() {
                Some(request) => Flow::Stalled(request),
                None => Flow::Continue,
            });
        };
        pending.set_packet_id(id);
        let packet = pending.packet();
        if let Err(e) = check_size(&packet, conn.version, conn.limits.max_packet_size) {
            pending.fail(&e);
            return Ok(Flow::Continue);
        }
        conn.queue(&packet)?;
        self.acks.push((id.get(), pending));
        Ok(Flow::Continue)
    }

    /// Decodes and handles every complete packet in the read buffer, until delivery pauses.
    fn process_input(&mut self, conn: &mut Conn) -> Result<(), Stop> {
        while self.paused.is_none() {
            let packet = decode(&mut conn.rbuf, conn.version, self.opts.max_incoming)
                .map_err(|e| Stop::Protocol(e.into()))?;
            let Some(packet) = packet else {
                return Ok(());
            };
            self.handle_packet(conn, packet)?;
        }
        Ok(())
    }

    fn handle_packet(&mut self, conn: &mut Conn, packet: Packet) -> Result<(), Stop> {
        match packet {
            Packet::Publish(p) => self.on_publish(conn, p),
            Packet::PubAck(r) => match self.window.puback(r.packet_id) {
                Ok(item) => {
                    complete(item, &r);
                    Ok(())
                }
                Err(e) => unknown_ack("PUBACK", e),
            },
            Packet::PubRec(r) => match self.window.pubrec(r.packet_id, r.reason) {
                Ok(PubRecOutcome::SendPubRel(id)) => conn
                    .queue(&Packet::PubRel(PubResponse::new(id)))
                    .map_err(Stop::End),
                Ok(PubRecOutcome::Refused(item, _)) => {
                    complete(item, &r);
                    Ok(())
                }
                Err(FlowError::UnknownPacketId(_)) => {
                    let mut rel = PubResponse::new(r.packet_id);
                    rel.reason = ReasonCode::PacketIdentifierNotFound;
                    conn.queue(&Packet::PubRel(rel)).map_err(Stop::End)
                }
                Err(e) => Err(Stop::Protocol(ProtocolError::Flow(e))),
            },
            Packet::PubRel(r) => {
                let mut comp = PubResponse::new(r.packet_id);
                comp.reason = self.inbound_qos2.pubrel(r.packet_id);
                conn.queue(&Packet::PubComp(comp)).map_err(Stop::End)
            }
            Packet::PubComp(r) => match self.window.pubcomp(r.packet_id) {
                Ok(item) => {
                    reply(item.done, Ok(()));
                    Ok(())
                }
                Err(e) => unknown_ack("PUBCOMP", e),
            },
            Packet::SubAck(ack) => self.on_suback(ack),
            Packet::UnsubAck(ack) => self.on_unsuback(ack),
            Packet::PingResp => {
                conn.ping_sent = None;
                Ok(())
            }
            Packet::Disconnect(d) => Err(Stop::End(ClientError::DisconnectedByServer {
                reason: d.reason,
                reason_string: ReasonString::from_opt(d.properties.reason_string.as_ref()),
                server_reference: d.properties.server_reference.map(|s| s.to_string()),
            })),
            Packet::Auth(_) => Err(Stop::Protocol(ProtocolError::AuthNotSupported)),
            other => Err(Stop::Protocol(ProtocolError::Unexpected(
                other.packet_type(),
            ))),
        }
    }

    fn on_publish(&mut self, conn: &mut Conn, mut publish: Publish) -> Result<(), Stop> {
        if let Some(alias) = publish.properties.topic_alias {
            publish.topic = conn
                .in_aliases
                .resolve(&publish.topic, Some(alias))
                .map_err(|e| Stop::Protocol(e.into()))?;
        }
        let ack = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (qos, None) => return Err(Stop::Protocol(ProtocolError::MissingPacketId(qos))),
            (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(PubResponse::new(id))),
            (QoS::ExactlyOnce, Some(id)) => {
                let limit = usize::from(self.opts.receive_maximum);
                match self.inbound_qos2.publish(id, limit) {
                    Ok(Qos2Publish::New) => Some(Packet::PubRec(PubResponse::new(id))),
                    Ok(Qos2Publish::Duplicate) => {
                        // Delivered already: acknowledge only.
                        return conn
                            .queue(&Packet::PubRec(PubResponse::new(id)))
                            .map_err(Stop::End);
                    }
                    Err(_) => return Err(Stop::Protocol(ProtocolError::ReceiveMaximumExceeded)),
                }
            }
        };
        let message = Message::from_publish(publish);
        let mut ack = ack;
        if self.dispatch(&message) {
            // Manual acknowledgements go with the message; the caller sends them.
            let manual = if self.opts.manual_acks {
                ack.take().map(|packet| Ack {
                    connection: self.opened,
                    packet,
                })
            } else {
                None
            };
            match self.msg_tx.try_send((message, manual)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(message)) => {
                    self.paused = Some(Paused { message, ack });
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed((_, manual))) => {
                    tracing::debug!("message queue closed; message dropped");
                    if let Some(manual) = manual {
                        ack = Some(manual.packet);
                    }
                }
            }
        }
        match ack {
            Some(ack) => conn.queue(&ack).map_err(Stop::End),
            None => Ok(()),
        }
    }

    /// Runs the callbacks of the subscriptions `message` matches (each callback once) and
    /// says whether it also goes to the `recv()` queue: when it matches a subscription
    /// without callback, or none at all.
    fn dispatch(&self, message: &Message) -> bool {
        let mut matched = false;
        let mut queue = false;
        let mut called: Vec<&Callback> = Vec::new();
        for sub in &self.subs {
            if !sub.filter.matches(&message.topic) {
                continue;
            }
            matched = true;
            match &sub.callback {
                None => queue = true,
                Some(callback) => {
                    if called.iter().any(|c| Arc::ptr_eq(c, callback)) {
                        continue;
                    }
                    called.push(callback);
                    let run = std::panic::catch_unwind(AssertUnwindSafe(|| callback(message)));
                    if run.is_err() {
                        tracing::error!(topic = %message.topic, "message callback panicked");
                    }
                }
            }
        }
        queue || !matched
    }

    fn take_ack(&mut self, id: PacketId) -> Option<PendingAck> {
        let index = self.acks.iter().position(|(a, _)| *a == id.get())?;
        Some(self.acks.remove(index).1)
    }

    fn on_suback(&mut self, ack: SubAck) -> Result<(), Stop> {
        let Some(pending) = self.take_ack(ack.packet_id) else {
            tracing::debug!(id = ack.packet_id.get(), "SUBACK for an unknown packet id");
            return Ok(());
        };
        let PendingAck::Subscribe {
            packet,
            callback,
            done,
        } = pending
        else {
            return Err(Stop::Protocol(ProtocolError::Unexpected(
                PacketType::SubAck,
            )));
        };
        if ack.reasons.len() != packet.filters.len() {
            tracing::warn!(
                filters = packet.filters.len(),
                reasons = ack.reasons.len(),
                "SUBACK reason count does not match the SUBSCRIBE"
            );
        }
        for (i, (filter, options)) in packet.filters.iter().enumerate() {
            let reason = ack
                .reasons
                .get(i)
                .copied()
                .unwrap_or(ReasonCode::UnspecifiedError);
            let existing = self.subs.iter().position(|s| &s.filter == filter);
            if reason.is_success() {
                let entry = SubEntry {
                    filter: filter.clone(),
                    options: *options,
                    properties: packet.properties.clone(),
                    callback: callback.clone(),
                };
                match existing {
                    Some(i) => self.subs[i] = entry,
                    None => self.subs.push(entry),
                }
            } else if done.is_none() {
                tracing::warn!(%filter, %reason, "restoring a subscription was refused");
                if let Some(i) = existing {
                    self.subs.remove(i);
                }
            }
        }
        reply(done, Ok(ack));
        Ok(())
    }

    fn on_unsuback(&mut self, ack: UnsubAck) -> Result<(), Stop> {
        let Some(pending) = self.take_ack(ack.packet_id) else {
            tracing::debug!(
                id = ack.packet_id.get(),
                "UNSUBACK for an unknown packet id"
            );
            return Ok(());
        };
        let PendingAck::Unsubscribe { packet, done } = pending else {
            return Err(Stop::Protocol(ProtocolError::Unexpected(
                PacketType::UnsubAck,
            )));
        };
        for (i, filter) in packet.filters.iter().enumerate() {
            // A 3.x UNSUBACK has no reason codes: success.
            if ack.reasons.get(i).is_none_or(|r| r.is_success()) {
                self.subs.retain(|s| &s.filter != filter);
            }
        }
        reply(Some(done), Ok(ack));
        Ok(())
    }

    /// The keep-alive timer: send PINGREQ when due; give up when PINGRESP is late.
    fn on_timer(&mut self, conn: &mut Conn) -> Result<(), ClientError> {
        let now = Instant::now();
        match conn.ping_sent {
            Some(sent)
                if sent
                    .checked_add(conn.ping_timeout)
                    .is_some_and(|t| now >= t) =>
            {
                if self.paused.is_some() {
                    // We are not reading, so a late PINGRESP proves nothing.
                    conn.ping_sent = Some(now);
                    return Ok(());
                }
                Err(ClientError::KeepAliveTimeout(conn.ping_timeout))
            }
            Some(_) => Ok(()),
            None => {
                let due = client_ping_due(conn.last_sent.into_std(), conn.keep_alive);
                if due.is_some_and(|due| now.into_std() >= due) {
                    conn.queue(&Packet::PingReq)?;
                    conn.ping_sent = Some(now);
                }
                Ok(())
            }
        }
    }

    /// Sends DISCONNECT and closes (a disconnect request, or every handle dropped).
    async fn close(&mut self, mut conn: Conn, packet: Disconnect, done: Option<Reply<()>>) -> End {
        if let Err(e) = conn.queue(&Packet::Disconnect(packet)) {
            tracing::warn!(error = %e, "cannot encode DISCONNECT");
        }
        conn.close(CLOSE_TIMEOUT).await;
        End::Closed(done)
    }

    /// Closes after a protocol error, telling a 5.0 broker why.
    async fn abort(&mut self, mut conn: Conn, error: ProtocolError) -> End {
        tracing::warn!(%error, "protocol error from the broker; closing the connection");
        if conn.version.is_v5() {
            let reason = Disconnect::new(error.reason_code());
            if let Err(e) = conn.queue(&Packet::Disconnect(reason)) {
                tracing::debug!(error = %e, "cannot encode DISCONNECT");
            }
        }
        conn.close(ABORT_TIMEOUT).await;
        End::Lost(ClientError::Protocol(error))
    }
}

/// An acknowledgement for an id not in flight is ignored (it can follow a re-send); one for
/// the wrong stage is a protocol error.
fn unknown_ack(what: &str, e: FlowError) -> Result<(), Stop> {
    match e {
        FlowError::UnknownPacketId(id) => {
            tracing::debug!(id, "{what} for a packet id not in flight, ignored");
            Ok(())
        }
        e => Err(Stop::Protocol(ProtocolError::Flow(e))),
    }
}

/// Completes a QoS 1/2 publish from its PUBACK or refusing PUBREC.
fn complete(item: InFlight, response: &PubResponse) {
    let reason = response.reason;
    let result = if reason.is_success() {
        Ok(())
    } else {
        let reason_string = ReasonString::from_opt(response.properties.reason_string.as_ref());
        Err(if reason == ReasonCode::NotAuthorized {
            ClientError::NotAuthorized {
                operation: format!("PUBLISH to {}", item.publish.topic),
                reason_string,
            }
        } else {
            ClientError::PublishRefused {
                topic: item.publish.topic.to_string(),
                reason,
                reason_string,
            }
        })
    };
    reply(item.done, result);
}
