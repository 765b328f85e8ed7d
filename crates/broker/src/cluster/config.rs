//! The `[cluster]` table: this node's name and how it reaches the NATS servers the cluster
//! runs on.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The `[cluster]` table. Without it the broker is a single node and never talks to NATS.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (letters, digits, `-` and `_`).
    pub node: String,
    /// NATS server URLs (`nats://host:port`, `tls://host:port`); the client connects to one
    /// and fails over to the others.
    pub servers: Vec<String>,
    /// The cluster's name: every NATS subject and JetStream bucket of the cluster starts
    /// with it, so that several clusters can share NATS servers. Default `sagitta`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Replicas of the cluster's JetStream buckets (retained messages, membership): 1, or
    /// 3 (or 5) with a NATS cluster of as many servers. Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// NATS user name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// NATS password (with `user`).
    #[serde(default)]
    pub password: Option<String>,
    /// NATS authentication token (instead of `user` and `password`).
    #[serde(default)]
    pub token: Option<String>,
    /// PEM file of the CA(s) that signed the NATS servers' certificates; setting it turns
    /// TLS on.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients (with `key`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Seconds between this node's heartbeats in the membership bucket; a node silent for
    /// three of them is no longer listed. Default 2.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Where the JetStream stream that carries QoS 1/2 messages between nodes keeps them:
    /// `memory` (the default: survives the loss of a minority of the NATS servers with
    /// `replicas` 3) or `file` (also survives a restart of every NATS server).
    #[serde(default)]
    pub stream_storage: StreamStorage,
    /// Seconds that stream keeps a message (nodes read it within milliseconds; the margin
    /// covers a node reconnecting to another NATS server). Default 600.
    #[serde(default = "default_stream_max_age")]
    pub stream_max_age_secs: u64,
    /// Most bytes that stream holds; the oldest messages go first. Default 256 MiB.
    #[serde(default = "default_stream_max_bytes")]
    pub stream_max_bytes: i64,
}

/// The storage of the stream of QoS 1/2 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStorage {
    /// In the NATS servers' memory.
    #[default]
    Memory,
    /// On the NATS servers' disks.
    File,
}

fn default_stream_max_age() -> u64 {
    600
}

fn default_stream_max_bytes() -> i64 {
    256 * 1024 * 1024
}

fn default_name() -> String {
    "sagitta".into()
}

fn default_replicas() -> usize {
    1
}

fn default_heartbeat() -> u64 {
    2
}

impl ClusterConfig {
    /// A cluster node named `node` on the NATS servers `servers`, with the defaults.
    pub fn new(node: impl Into<String>, servers: Vec<String>) -> Self {
        Self {
            node: node.into(),
            servers,
            name: default_name(),
            replicas: default_replicas(),
            user: None,
            password: None,
            token: None,
            ca_file: None,
            cert: None,
            key: None,
            heartbeat_secs: default_heartbeat(),
            stream_storage: StreamStorage::default(),
            stream_max_age_secs: default_stream_max_age(),
            stream_max_bytes: default_stream_max_bytes(),
        }
    }

    /// The heartbeat period.
    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }

    /// Checks the table; the error names the key.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let token = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token(&self.node) {
            return Err((
                "cluster.node",
                "must be 1-64 letters, digits, `-` or `_`".into(),
            ));
        }
        if !token(&self.name) {
            return Err((
                "cluster.name",
                "must be 1-64 letters, digits, `-` or `_`".into(),
            ));
        }
        if self.servers.is_empty() {
            return Err(("cluster.servers", "name at least one NATS server".into()));
        }
        for s in &self.servers {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|p| s.starts_with(p));
            if !scheme_ok && s.contains("://") {
                return Err((
                    "cluster.servers",
                    format!("{s}: use nats://, tls://, ws:// or wss://"),
                ));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(("cluster.replicas", "must be between 1 and 5".into()));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(("cluster.user", "`user` and `password` go together".into()));
        }
        if self.token.is_some() && self.user.is_some() {
            return Err((
                "cluster.token",
                "use either `token` or `user` and `password`".into(),
            ));
        }
        if self.stream_max_age_secs < 10 {
            return Err(("cluster.stream_max_age_secs", "must be at least 10".into()));
        }
        if self.stream_max_bytes < 1024 * 1024 {
            return Err(("cluster.stream_max_bytes", "must be at least 1 MiB".into()));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(("cluster.cert", "`cert` and `key` go together".into()));
        }
        Ok(())
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node", &self.node)
            .field("servers", &self.servers)
            .field("name", &self.name)
            .field("replicas", &self.replicas)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("ca_file", &self.ca_file)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("stream_storage", &self.stream_storage)
            .field("stream_max_age_secs", &self.stream_max_age_secs)
            .field("stream_max_bytes", &self.stream_max_bytes)
            .finish()
    }
}
