//! A blocking facade for programs without an async runtime.
//!
//! [`Client`] owns a small tokio runtime (one worker thread) on which the event loop runs;
//! each call blocks the calling thread until the async call completes. Callbacks run on the
//! runtime's thread: they must not block, and must not call this client's blocking methods
//! (those return [`ClientError::BlockingInRuntime`] there instead of deadlocking).
//!
//! ```no_run
//! use std::time::Duration;
//! use sagitta_client::QoS;
//! use sagitta_client::blocking::Client;
//!
//! let client = Client::connect("localhost:1883")?;
//! client.subscribe_recv("greetings/#", QoS::AtLeastOnce)?;
//! client.publish_with("greetings/en", "hello", QoS::AtLeastOnce)?;
//! if let Ok(msg) = client.recv_timeout(Duration::from_secs(1)) {
//!     println!("{}: {:?}", msg.topic, msg.payload);
//! }
//! client.disconnect()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sagitta_proto::{Disconnect, QoS, SubAck, UnsubAck};
use tokio::runtime::{Handle, Runtime};

use crate::client::Status;
use crate::error::{ClientError, ConnectError};
use crate::message::Message;
use crate::options::{ClientBuilder, IntoTopicFilter, IntoTopicName, PublishOptions, Subscription};

/// Why [`Client::recv_timeout`] returned without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No message within the timeout.
    #[error("no message within the timeout")]
    Timeout,
    /// The client is closed and the queue is empty.
    #[error("the client is closed")]
    Closed,
}

/// A blocking MQTT client: the same calls as [`crate::Client`], without `async`. Cheap to
/// clone; dropping the last clone disconnects and stops the runtime thread.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: crate::Client,
    /// Taken on drop.
    runtime: Option<Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Inside a runtime (the last clone dropped by a callback) we cannot block: the
            // event loop then ends when it sees every handle gone, or with the runtime.
            if Handle::try_current().is_err() {
                let close = self.client.disconnect();
                runtime.block_on(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(3), close).await;
                });
            }
            runtime.shutdown_background();
        }
    }
}

impl Client {
    /// Connects to `addr` (`host:port`, port 1883 by default) with the default options.
    pub fn connect(addr: impl Into<String>) -> Result<Self, ConnectError> {
        Self::connect_with(ClientBuilder::new(addr))
    }

    /// A builder; finish it with [`ClientBuilder::connect_blocking`].
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    pub(crate) fn connect_with(builder: ClientBuilder) -> Result<Self, ConnectError> {
        if Handle::try_current().is_ok() {
            return Err(ConnectError::BlockingInRuntime);
        }
        let opts = builder.build()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sagitta-client")
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Io {
                addr: opts.addr.clone(),
                source: Arc::new(e),
            })?;
        let client = runtime.block_on(crate::Client::connect_with(opts))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                runtime: Some(runtime),
            }),
        })
    }

    fn block_on<'a, F, Fut>(&'a self, call: F) -> Result<Fut::Output, ClientError>
    where
        F: FnOnce(&'a crate::Client) -> Fut,
        Fut: Future,
    {
        if Handle::try_current().is_ok() {
            return Err(ClientError::BlockingInRuntime);
        }
        match &self.inner.runtime {
            Some(runtime) => Ok(runtime.block_on(call(&self.inner.client))),
            None => Err(ClientError::Closed),
        }
    }

    /// Publishes with QoS 0, not retained; returns once queued.
    pub fn publish(
        &self,
        topic: impl IntoTopicName,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.block_on(|c| c.publish(topic, payload))?
    }

    /// Publishes with options (or a bare [`QoS`]); returns when the QoS flow completes.
    pub fn publish_with(
        &self,
        topic: impl IntoTopicName,
        payload: impl Into<Bytes>,
        options: impl Into<PublishOptions>,
    ) -> Result<(), ClientError> {
        self.block_on(|c| c.publish_with(topic, payload, options))?
    }

    /// Subscribes with a callback that gets the topic and payload (runs on the runtime
    /// thread; must not block). Returns the granted QoS.
    pub fn subscribe<F>(
        &self,
        filter: impl IntoTopicFilter,
        qos: QoS,
        callback: F,
    ) -> Result<QoS, ClientError>
    where
        F: Fn(&str, &[u8]) + Send + Sync + 'static,
    {
        self.block_on(|c| c.subscribe(filter, qos, callback))?
    }

    /// Subscribes without callback; read messages with [`Client::recv`].
    pub fn subscribe_recv(
        &self,
        filter: impl IntoTopicFilter,
        qos: QoS,
    ) -> Result<QoS, ClientError> {
        self.block_on(|c| c.subscribe_recv(filter, qos))?
    }

    /// Subscribes to several filters with 5.0 options; returns the SUBACK.
    pub fn subscribe_with(&self, subscription: Subscription) -> Result<SubAck, ClientError> {
        self.block_on(|c| c.subscribe_with(subscription))?
    }

    /// Unsubscribes from `filter`.
    pub fn unsubscribe(&self, filter: impl IntoTopicFilter) -> Result<(), ClientError> {
        self.block_on(|c| c.unsubscribe(filter))?
    }

    /// Unsubscribes from several filters; returns the UNSUBACK.
    pub fn unsubscribe_many<F: IntoTopicFilter>(
        &self,
        filters: impl IntoIterator<Item = F>,
    ) -> Result<UnsubAck, ClientError> {
        self.block_on(|c| c.unsubscribe_many(filters))?
    }

    /// Blocks for the next message of a subscription without callback; `None` once the client
    /// is closed (or when called from inside an async runtime).
    pub fn recv(&self) -> Option<Message> {
        self.block_on(|c| c.recv()).ok().flatten()
    }

    /// Like [`Client::recv`], giving up after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        // The timer is made inside the runtime, in the async block.
        match self.block_on(|c| async move { tokio::time::timeout(timeout, c.recv()).await }) {
            Ok(Ok(Some(message))) => Ok(message),
            Ok(Err(_)) => Err(RecvTimeoutError::Timeout),
            Ok(Ok(None)) | Err(_) => Err(RecvTimeoutError::Closed),
        }
    }

    /// A queued message, without blocking.
    pub fn try_recv(&self) -> Option<Message> {
        self.inner.client.try_recv()
    }

    /// Disconnects normally (the will is not published).
    pub fn disconnect(&self) -> Result<(), ClientError> {
        self.block_on(|c| c.disconnect())?
    }

    /// Disconnects with a 5.0 reason code and properties.
    pub fn disconnect_with(&self, packet: Disconnect) -> Result<(), ClientError> {
        self.block_on(|c| c.disconnect_with(packet))?
    }

    /// The connection status now.
    pub fn status(&self) -> Status {
        self.inner.client.status()
    }

    /// The async client this one drives, e.g. to hand to code that has a runtime.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner.client
    }
}
