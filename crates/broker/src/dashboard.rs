//! The web dashboard: its static files (HTML, CSS, JavaScript, embedded in the binary from
//! `assets/dashboard/`, no build step), and the JSON it needs beyond the admin API: the
//! overview (`GET /api/v1/overview`) and the configuration with the listeners
//! (`GET /api/v1/config`, secrets masked). Live data is in `live`.
//!
//! The static files hold no data and are served without the token; the page asks for it and
//! sends it with every request (`Authorization: Bearer`) and as the first message of the
//! live WebSocket.

use serde_json::{Value, json};

use crate::broker::Shared;
use crate::config::Config;
use crate::listener::ListenerInfo;
use crate::live::Sample;
use crate::metrics::Metrics;

/// One embedded file.
pub(crate) struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ty:literal) => {
        Asset {
            content_type: $ty,
            body: include_bytes!(concat!("../assets/dashboard/", $name)),
        }
    };
}

/// The file served at a path, if any: `/` is the page, `/assets/<name>` the rest.
pub(crate) fn asset(path: &str) -> Option<Asset> {
    Some(match path {
        "/" | "/index.html" => asset!("index.html", "text/html; charset=utf-8"),
        "/assets/app.js" => asset!("app.js", "text/javascript; charset=utf-8"),
        "/assets/chart.js" => asset!("chart.js", "text/javascript; charset=utf-8"),
        "/assets/style.css" => asset!("style.css", "text/css; charset=utf-8"),
        "/assets/favicon.svg" | "/favicon.ico" => asset!("favicon.svg", "image/svg+xml"),
        _ => return None,
    })
}

/// The Content-Security-Policy of every dashboard file: nothing from elsewhere, no inline
/// script or style, no framing.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'none'";

/// `GET /api/v1/overview`: version, uptime, totals and the last minutes of samples.
pub(crate) fn overview(shared: &Shared) -> Value {
    let m = &shared.metrics;
    let get = Metrics::get;
    let history: Vec<Sample> = shared.live.history();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": shared.started.elapsed().as_secs(),
        "connections": get(&m.clients_connected),
        "connections_total": get(&m.clients_total),
        "connections_maximum": get(&m.clients_maximum),
        "sessions": shared.sessions.len(),
        "subscriptions": shared.router.len(),
        "retained": shared.retained.len(),
        "messages_received": m.received_by_qos.iter().map(get).sum::<u64>(),
        "messages_sent": m.sent_by_qos.iter().map(get).sum::<u64>(),
        "bytes_received": get(&m.bytes_received),
        "bytes_sent": get(&m.bytes_sent),
        "dropped": get(&m.dropped_queue_full) + get(&m.dropped_offline)
            + get(&m.dropped_too_large) + get(&m.dropped_expired),
        "persistence": shared.store.is_some(),
        "history": history,
    })
}

/// What secrets look like in `GET /api/v1/config`.
const MASK: &str = "********";

/// `GET /api/v1/config`: the settings that matter to an operator, read-only. Built field
/// by field: a setting not named here is not shown, so no new secret can leak by default.
/// File paths are shown; tokens are not.
pub(crate) fn config_view(config: &Config) -> Value {
    let listeners: Vec<Value> = config
        .listeners
        .iter()
        .map(|l| {
            json!({
                "kind": format!("{:?}", l.kind),
                "bind": l.bind.to_string(),
                "name": l.name,
                "cert": l.cert.as_ref().map(|p| p.display().to_string()),
                "key": l.key.as_ref().map(|p| p.display().to_string()),
                "client_ca": l.client_ca.as_ref().map(|p| p.display().to_string()),
                "require_client_cert": l.require_client_cert,
                "crl_file": l.crl_file.as_ref().map(|p| p.display().to_string()),
                "use_identity_as_username": l.use_identity_as_username,
                "allow_anonymous": l.allow_anonymous,
                "password_file": l.password_file.as_ref().map(|p| p.display().to_string()),
                "max_connections": l.max_connections,
                "path": l.path,
            })
        })
        .collect();
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    json!({
        "listen": config.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "listeners": listeners,
        "max_packet_size": config.max_packet_size,
        "connect_timeout": config.connect_timeout,
        "failed_login_delay_ms": config.failed_login_delay_ms,
        "max_connections": config.max_connections,
        "max_connection_rate": config.max_connection_rate,
        "max_publish_rate": config.max_publish_rate,
        "max_publish_bandwidth": config.max_publish_bandwidth,
        "max_subscriptions_per_client": config.max_subscriptions_per_client,
        "max_topic_levels": config.max_topic_levels,
        "max_inflight": config.max_inflight,
        "receive_maximum": config.receive_maximum,
        "max_queued_messages": config.max_queued_messages,
        "max_session_expiry": config.max_session_expiry,
        "max_keep_alive": config.max_keep_alive,
        "topic_alias_maximum": config.topic_alias_maximum,
        "maximum_qos": config.maximum_qos,
        "retain_available": config.retain_available,
        "allow_zero_length_client_id": config.allow_zero_length_client_id,
        "sys_interval": config.sys_interval,
        "password_file": path(&config.password_file),
        "allow_anonymous": config.allow_anonymous,
        "acl_file": path(&config.acl_file),
        "persistence": config.persistence,
        "data_dir": config.data_dir.display().to_string(),
        "sync": format!("{:?}", config.sync).to_lowercase(),
        "sync_interval_ms": config.sync_interval_ms,
        "http": config.http.as_ref().map(|h| json!({
            "bind": h.bind.to_string(),
            "token": h.token.as_ref().map(|_| MASK),
            "https": h.cert.is_some(),
            "cert": path(&h.cert),
        })),
    })
}

/// The bound listeners as `GET /api/v1/config` shows them.
pub(crate) fn listeners_view(listeners: &[ListenerInfo]) -> Value {
    listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "kind": format!("{:?}", l.kind),
                "local_addr": l.local_addr.to_string(),
                "allow_anonymous": l.allow_anonymous,
                "verifies_client_certificates": l.verifies_client_certificates,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpConfig;

    #[test]
    fn every_asset_is_embedded_and_typed() {
        for p in [
            "/",
            "/assets/app.js",
            "/assets/chart.js",
            "/assets/style.css",
            "/favicon.ico",
        ] {
            let a = asset(p).unwrap();
            assert!(!a.body.is_empty(), "{p}");
        }
        assert!(asset("/assets/../Cargo.toml").is_none());
        assert!(asset("/api/v1/clients").is_none());
    }

    /// The clients page with 100 000 sessions: one page, searched and sorted on the server,
    /// is one cheap request (the bound is loose: debug builds on a busy machine).
    #[test]
    fn a_page_of_100k_clients_is_cheap() {
        use crate::admin::{ClientSort, Page, list_clients};
        use crate::session::{ClientInfo, SessionEntry};
        use std::sync::Arc;
        let shared = crate::broker::Broker::shared(Config::default().in_memory(), None, None, None);
        for i in 0..100_000u32 {
            let e = SessionEntry::new(format!("device-{i:06}").into(), 100);
            e.set_info(ClientInfo {
                peer: Some(std::net::SocketAddr::from((
                    [10, 0, (i >> 8) as u8, i as u8],
                    1883,
                ))),
                ..ClientInfo::default()
            });
            shared.sessions.restore(Arc::new(e));
        }
        let page = Page {
            offset: 50_000,
            limit: 50,
        };
        let started = std::time::Instant::now();
        let all = list_clients(
            &shared,
            None,
            ClientSort::parse(Some("peer"), true).unwrap(),
            page,
        );
        let found = list_clients(
            &shared,
            Some("device-0999"),
            ClientSort::parse(None, false).unwrap(),
            Page::default(),
        );
        let took = started.elapsed();
        assert_eq!(all["total"], 100_000);
        assert_eq!(all["clients"].as_array().unwrap().len(), 50);
        assert_eq!(found["total"], 100);
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
        eprintln!("two pages of 100k clients: {took:?}");
    }

    #[test]
    fn the_token_is_masked() {
        let mut h = HttpConfig::new("127.0.0.1:0".parse().unwrap());
        h.token = Some("s3cret-token".into());
        let c = Config::default().http(h);
        let text = config_view(&c).to_string();
        assert!(!text.contains("s3cret-token"), "{text}");
        assert!(text.contains(MASK));
    }
}
