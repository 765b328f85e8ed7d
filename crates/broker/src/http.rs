//! The operators' HTTP listener (`[http]`): `GET /metrics` (Prometheus), `GET /health`,
//! `GET /ready`, the admin API under `/api/v1/` and the web dashboard at `/` (`dashboard`,
//! `live`). A thin layer over `admin`: it routes,
//! checks the bearer token, parses paths, queries and bodies, and writes responses.
//!
//! It cannot get in the way of MQTT: at most [`MAX_CONNECTIONS`] HTTP connections at once
//! (more wait in the kernel's backlog), headers within [`HEADER_TIMEOUT`] and at most
//! [`MAX_HEADER_BUF`] bytes, bodies within a size limit, each request within
//! [`REQUEST_TIMEOUT`], each connection at most [`CONNECTION_LIFETIME`]; the listing
//! endpoints and the metrics run on blocking threads. The server starts before the store is
//! read (so `/health` answers and `/ready` says why not yet) and stops after the broker has
//! shut down (so `/ready` answers 503 meanwhile).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admin::{self, ApiError, MAX_LIMIT, Page};
use crate::broker::Shared;
use crate::config::{Config, HttpConfig};
use crate::dashboard;
use crate::listener::ListenerInfo;
use crate::tls::{TlsError, TlsFiles, TlsState};

/// HTTP connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send a request's headers (also the idle time allowed between two
/// requests on a kept-alive connection).
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of request line and headers buffered.
pub(crate) const MAX_HEADER_BUF: usize = 16 * 1024;
/// Time to read a request's body and answer it.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest life of one HTTP connection; clients reconnect.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// How far the broker's start has come, for `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    OpeningStore = 0,
    Restoring = 1,
    Ready = 2,
}

/// What the HTTP server shares with the broker.
pub(crate) struct HttpState {
    /// SHA-256 of the bearer token: compared in constant time, whatever its length.
    token: Option<[u8; 32]>,
    /// Set once the broker's state exists.
    shared: OnceLock<Arc<Shared>>,
    phase: AtomicU8,
    /// Largest request body (`POST /api/v1/publish`).
    body_limit: usize,
    /// The configuration as `GET /api/v1/config` shows it (secrets masked).
    config: Value,
    /// The bound listeners, once they are.
    listeners: OnceLock<Value>,
}

/// The running HTTP server: stopped by [`HttpServer::stop`], or when dropped.
pub(crate) struct HttpServer {
    state: Arc<HttpState>,
    local_addr: SocketAddr,
    stop: tokio_util::sync::DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `http.bind` and starts serving (HTTPS with `tls`, from [`tls_state`]); `/ready`
    /// answers 503 until [`HttpServer::ready`].
    pub async fn start(
        http: &HttpConfig,
        config: &Config,
        tls: Option<Arc<TlsState>>,
    ) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(http.bind).await?;
        let local_addr = listener.local_addr()?;
        let body_limit = (config.max_packet_size as usize)
            .saturating_mul(2)
            .saturating_add(64 * 1024)
            .min(64 * 1024 * 1024);
        let state = Arc::new(HttpState {
            token: http
                .token
                .as_ref()
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            shared: OnceLock::new(),
            phase: AtomicU8::new(Phase::OpeningStore as u8),
            body_limit,
            config: dashboard::config_view(config),
            listeners: OnceLock::new(),
        });
        let stop = CancellationToken::new();
        let https = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, tls, state.clone(), stop.clone()));
        info!(addr = %local_addr, https, token = state.token.is_some(), "HTTP listener (metrics, health, admin API, dashboard at /)");
        Ok(HttpServer {
            state,
            local_addr,
            stop: stop.drop_guard(),
            task,
        })
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The broker's state exists; it is being restored from the store.
    pub fn attach(&self, shared: Arc<Shared>) {
        shared
            .tracker
            .spawn(crate::live::sample_loop(shared.clone()));
        let _ = self.state.shared.set(shared);
        self.state
            .phase
            .store(Phase::Restoring as u8, Ordering::Release);
    }

    /// Every listener is bound: the broker is ready.
    pub fn ready(&self, listeners: &[ListenerInfo]) {
        let _ = self
            .state
            .listeners
            .set(dashboard::listeners_view(listeners));
        self.state
            .phase
            .store(Phase::Ready as u8, Ordering::Release);
    }

    /// Stops accepting, lets requests under way finish (briefly) and waits for the server.
    pub async fn stop(self) {
        drop(self.stop);
        if self.task.await.is_err() {
            warn!("the HTTP server task failed");
        }
    }
}

/// The TLS state of an HTTPS listener (`cert` and `key` set), its files read; `None` for
/// plain HTTP. The broker reloads it with the other TLS listeners (SIGHUP).
pub(crate) fn tls_state(http: &HttpConfig) -> Result<Option<Arc<TlsState>>, TlsError> {
    let (Some(cert), Some(key)) = (&http.cert, &http.key) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
        require_client_cert: false,
        crl: None,
    };
    Ok(Some(Arc::new(TlsState::load(files)?)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsState>>,
    state: Arc<HttpState>,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = limit.clone().acquire_owned() => p,
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The configuration of the moment: a reload applies to new connections.
        let tls = tls.as_ref().map(|t| TlsAcceptor::from(t.current()));
        let (state, stop) = (state.clone(), stop.clone());
        tracker.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, peer, state, stop).await,
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, state, stop).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "HTTPS handshake failed"),
                    Err(_) => debug!(%peer, "no HTTPS handshake in time"),
                },
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(2), tracker.wait())
        .await
        .is_err()
    {
        debug!("HTTP connections still open at shutdown were dropped");
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<HttpState>,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, handle(&state, req)).await {
                Ok(r) => r,
                Err(_) => error(ApiError::unavailable("the request took too long")),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BUF)
        .keep_alive(true);
    // Upgrades: the dashboard's live WebSocket (`GET /api/v1/live`).
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
    }
}

type Body = Full<Bytes>;

fn respond(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: u16, value: &Value) -> Response<Body> {
    let mut body = value.to_string();
    body.push('\n');
    respond(status, "application/json", body)
}

fn error(e: ApiError) -> Response<Body> {
    let mut r = json_response(e.status, &json!({ "error": e.message }));
    if e.status == 401 {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sagitta\""),
        );
    }
    r
}

fn result(r: Result<Value, ApiError>) -> Response<Body> {
    match r {
        Ok(v) => json_response(200, &v),
        Err(e) => error(e),
    }
}

/// Runs a listing on a blocking thread: it walks every session or subscription.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .map_err(|e| ApiError {
            status: 500,
            message: format!("the request failed: {e}"),
        })
}

/// The endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Metrics,
    Clients,
    Client(String),
    Subscriptions,
    Retained,
    Publish,
    Overview,
    Config,
    /// The dashboard's live WebSocket.
    Live,
    /// A file of the dashboard.
    Dashboard,
    Bridges,
    Cluster,
}

impl Route {
    /// The route of a raw (percent-encoded) path.
    fn parse(path: &str) -> Result<Route, ApiError> {
        let not_found = || ApiError::not_found(format!("no such endpoint: {path}"));
        match path {
            "/health" => return Ok(Route::Health),
            "/ready" => return Ok(Route::Ready),
            "/metrics" => return Ok(Route::Metrics),
            p if dashboard::asset(p).is_some() => return Ok(Route::Dashboard),
            _ => {}
        }
        let rest = path.strip_prefix("/api/v1/").ok_or_else(not_found)?;
        let mut parts = rest.splitn(2, '/');
        let route = match (parts.next(), parts.next()) {
            (Some("clients"), None) => Route::Clients,
            (Some("clients"), Some(id)) if !id.is_empty() && !id.contains('/') => {
                Route::Client(percent_decode(id, false)?)
            }
            (Some("subscriptions"), None) => Route::Subscriptions,
            (Some("retained"), None) => Route::Retained,
            (Some("publish"), None) => Route::Publish,
            (Some("overview"), None) => Route::Overview,
            (Some("config"), None) => Route::Config,
            (Some("live"), None) => Route::Live,
            (Some("bridges"), None) => Route::Bridges,
            (Some("cluster"), None) => Route::Cluster,
            _ => return Err(not_found()),
        };
        Ok(route)
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Client(_) | Route::Retained => &[Method::GET, Method::DELETE],
            Route::Publish => &[Method::POST],
            _ => &[Method::GET],
        }
    }
}

/// Decodes `%XX` escapes (and, in a query, `+` as a space); the result must be UTF-8.
fn percent_decode(s: &str, query: bool) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("bad percent-encoding in {s:?}"));
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(|c| (c as char).to_digit(16));
                let lo = bytes.next().and_then(|c| (c as char).to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(bad()),
                }
            }
            b'+' if query => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// A request's query parameters, decoded.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Query, ApiError> {
        let mut params = Vec::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params.push((percent_decode(k, true)?, percent_decode(v, true)?));
        }
        Ok(Query(params))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, key: &str, default: usize) -> Result<usize, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad_request(format!("{key}: expected a non-negative integer, got {v:?}"))
            }),
        }
    }

    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1" | "") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!(
                "{key}: expected true or false, got {v:?}"
            ))),
        }
    }

    fn page(&self) -> Result<Page, ApiError> {
        Ok(Page {
            offset: self.number("offset", 0)?,
            limit: self.number("limit", admin::DEFAULT_LIMIT)?.min(MAX_LIMIT),
        })
    }
}

/// Whether `given` is the token whose SHA-256 is `want` (anything is, without a token).
fn token_matches(want: Option<&[u8; 32]>, given: &str) -> bool {
    match want {
        None => true,
        Some(want) => Sha256::digest(given.as_bytes()).ct_eq(want).into(),
    }
}

impl HttpState {
    /// Whether the request's headers carry the bearer token (or none is needed).
    fn authorized(&self, headers: &hyper::HeaderMap) -> bool {
        if self.token.is_none() {
            return true;
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        given.is_some_and(|token| token_matches(self.token.as_ref(), token))
    }

    /// `GET /ready`: 200 once every listener is bound and the store is open; else 503 and
    /// why.
    fn readiness(&self) -> (u16, Value) {
        let phase = self.phase.load(Ordering::Acquire);
        let reason = match (self.shared.get(), phase) {
            (Some(s), _) if s.shutdown.is_cancelled() => Some("shutting down"),
            (Some(s), _) if s.store.as_ref().is_some_and(|st| st.failed()) => {
                Some("the store cannot be written")
            }
            (_, p) if p == Phase::OpeningStore as u8 => Some("starting: opening the store"),
            (_, p) if p == Phase::Restoring as u8 => {
                Some("starting: restoring state and binding listeners")
            }
            _ => None,
        };
        match reason {
            None => (200, json!({ "status": "ready" })),
            Some(reason) => (503, json!({ "status": "unavailable", "reason": reason })),
        }
    }
}

async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Body> {
    let route = match Route::parse(req.uri().path()) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    if !route.methods().contains(req.method()) {
        let allow = route
            .methods()
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let mut r = error(ApiError {
            status: 405,
            message: format!(
                "method {} not allowed here (allowed: {allow})",
                req.method()
            ),
        });
        if let Ok(v) = HeaderValue::from_str(&allow) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    }
    match route {
        Route::Health => return respond(200, "text/plain; charset=utf-8", "ok\n"),
        Route::Ready => {
            let (status, body) = state.readiness();
            return json_response(status, &body);
        }
        // No data in the page's files; the live socket checks the token in-band.
        Route::Dashboard => return dashboard_file(&req),
        Route::Live => return live_upgrade(state, req),
        _ => {}
    }
    if !state.authorized(req.headers()) {
        return error(ApiError {
            status: 401,
            message: "missing or wrong bearer token (Authorization: Bearer <token>)".into(),
        });
    }
    let Some(shared) = state.shared.get() else {
        return error(ApiError::unavailable("the broker is starting"));
    };
    let query = match Query::parse(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return error(e),
    };
    match api(state, shared, route, query, req).await {
        Ok(r) => r,
        Err(e) => error(e),
    }
}

async fn api(
    state: &HttpState,
    shared: &Arc<Shared>,
    route: Route,
    query: Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let delete = req.method() == Method::DELETE;
    Ok(match route {
        Route::Metrics => {
            let text = blocking(shared, admin::metrics_text).await?;
            respond(200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        Route::Clients => {
            let search = query.get("search").map(str::to_owned);
            let page = query.page()?;
            let sort = admin::ClientSort::parse(query.get("sort"), query.flag("desc")?)?;
            let v = blocking(shared, move |s| {
                admin::list_clients(s, search.as_deref(), sort, page)
            })
            .await?;
            json_response(200, &v)
        }
        Route::Client(id) if delete => {
            let end_session = query.flag("session")?;
            result(admin::disconnect_client(shared, &id, end_session).await)
        }
        Route::Client(id) => result(blocking(shared, move |s| admin::get_client(s, &id)).await?),
        Route::Subscriptions => {
            let filter = query.get("filter").map(str::to_owned);
            let page = query.page()?;
            let v = blocking(shared, move |s| {
                admin::list_subscriptions(s, filter.as_deref(), page)
            })
            .await?;
            json_response(200, &v)
        }
        Route::Retained if delete => {
            let topic = query
                .get("topic")
                .ok_or_else(|| ApiError::bad_request("topic: required (an exact topic name)"))?;
            result(admin::delete_retained(shared, topic).await)
        }
        Route::Retained => {
            let filter = query.get("topic").unwrap_or("#").to_owned();
            let limit = query.number("limit", admin::DEFAULT_LIMIT)?.min(MAX_LIMIT);
            result(blocking(shared, move |s| admin::list_retained(s, &filter, limit)).await?)
        }
        Route::Publish => {
            let body = read_body(state, req).await?;
            result(admin::publish(shared, &body).await)
        }
        Route::Overview => json_response(200, &blocking(shared, dashboard::overview).await?),
        Route::Config => {
            let mut v = state.config.clone();
            v["bound"] = state.listeners.get().cloned().unwrap_or(Value::Null);
            json_response(200, &v)
        }
        Route::Bridges => json_response(200, &crate::bridge::status_json(shared)),
        Route::Cluster => json_response(200, &crate::cluster::status_json(shared)),
        Route::Health | Route::Ready | Route::Dashboard | Route::Live => {
            error(ApiError::not_found("no such endpoint"))
        }
    })
}

/// A file of the dashboard, with its Content-Security-Policy; `304` when the browser has
/// it already (the ETag is the hash of the content).
fn dashboard_file(req: &Request<Incoming>) -> Response<Body> {
    let Some(asset) = dashboard::asset(req.uri().path()) else {
        return error(ApiError::not_found("no such file"));
    };
    let digest = Sha256::digest(asset.body);
    let etag = format!(
        "\"{}\"",
        digest[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        respond(304, asset.content_type, Bytes::new())
    } else {
        respond(200, asset.content_type, Bytes::from_static(asset.body))
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(dashboard::CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// `GET /api/v1/live`: upgrades to the dashboard's live WebSocket (`live`). Only from the
/// page's own origin (when the browser says which), at most `live::MAX_SOCKETS` at once; the
/// token is the first message.
fn live_upgrade(state: &HttpState, req: Request<Incoming>) -> Response<Body> {
    let Some(shared) = state.shared.get().cloned() else {
        return error(ApiError::unavailable("the broker is starting"));
    };
    let headers = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return error(ApiError::bad_request(
            "a WebSocket upgrade is expected here (the dashboard's live data)",
        ));
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return error(ApiError::bad_request("Sec-WebSocket-Version: 13 expected"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return error(ApiError::bad_request("Sec-WebSocket-Key missing"));
    };
    // Another site's page must not read the live data of a broker without a token.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, h)| h);
        if host.is_none() || origin_host != host {
            return error(ApiError {
                status: 403,
                message: "the live socket is only for the dashboard's own page".into(),
            });
        }
    }
    let Some(permit) = crate::live::socket_permit(&shared.live) else {
        return error(ApiError::unavailable(
            "too many live dashboard sockets open",
        ));
    };
    let accept = crate::ws::accept_key(key.as_bytes());
    let token = state.token;
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let authorize = move |t: &str| token_matches(token.as_ref(), t);
                crate::live::serve(upgraded, shared, authorize, permit).await;
            }
            Err(e) => debug!(error = %e, "live dashboard upgrade failed"),
        }
    });
    let mut r = respond(101, "text/plain", Bytes::new());
    r.headers_mut().remove(header::CONTENT_TYPE);
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// The request body, at most `body_limit` bytes (413 beyond).
async fn read_body(state: &HttpState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = || ApiError {
        status: 413,
        message: format!("request body larger than {} bytes", state.body_limit),
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.body_limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), state.body_limit)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("cannot read the body: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_percent_decoding() {
        assert_eq!(Route::parse("/health").unwrap(), Route::Health);
        assert_eq!(Route::parse("/api/v1/clients").unwrap(), Route::Clients);
        assert_eq!(
            Route::parse("/api/v1/clients/a%2Fb%20c+d").unwrap(),
            Route::Client("a/b c+d".into())
        );
        assert_eq!(
            Route::parse("/api/v1/clients/%C3%A9").unwrap(),
            Route::Client("é".into())
        );
        assert_eq!(Route::parse("/api/v1/clients/").unwrap_err().status, 404);
        assert_eq!(Route::parse("/api/v1/clients/a/b").unwrap_err().status, 404);
        assert_eq!(Route::parse("/api/v2/clients").unwrap_err().status, 404);
        assert_eq!(Route::parse("/api/v1/clients/%zz").unwrap_err().status, 400);
        assert_eq!(Route::parse("/api/v1/clients/%ff").unwrap_err().status, 400);
        assert_eq!(Route::parse("/api/v1/clients/%4").unwrap_err().status, 400);
    }

    fn state(token: Option<&str>) -> HttpState {
        HttpState {
            token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            shared: OnceLock::new(),
            phase: AtomicU8::new(Phase::OpeningStore as u8),
            body_limit: 1024,
            config: Value::Null,
            listeners: OnceLock::new(),
        }
    }

    #[test]
    fn bearer_tokens() {
        let headers = |value: Option<&'static str>| {
            let mut h = hyper::HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            }
            h
        };
        assert!(state(None).authorized(&headers(None)));
        let s = state(Some("s3cret"));
        assert!(s.authorized(&headers(Some("Bearer s3cret"))));
        assert!(s.authorized(&headers(Some("bearer s3cret"))));
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
            Some("Bearer"),
        ] {
            assert!(!s.authorized(&headers(wrong)), "{wrong:?}");
        }
    }

    #[test]
    fn readiness_follows_the_start() {
        let s = state(None);
        let (status, body) = s.readiness();
        assert_eq!(status, 503);
        assert_eq!(body["reason"], "starting: opening the store");
        s.phase.store(Phase::Restoring as u8, Ordering::Release);
        assert_eq!(s.readiness().0, 503);
        s.phase.store(Phase::Ready as u8, Ordering::Release);
        assert_eq!(s.readiness(), (200, json!({"status": "ready"})));
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("topic=a%2F%2B&search=x+y&limit=5&session")).unwrap();
        assert_eq!(q.get("topic"), Some("a/+"));
        assert_eq!(q.get("search"), Some("x y"));
        assert_eq!(
            q.page().unwrap(),
            Page {
                offset: 0,
                limit: 5
            }
        );
        assert!(q.flag("session").unwrap());
        assert!(!q.flag("other").unwrap());
        let q = Query::parse(Some("limit=-1&session=maybe&offset=99999999")).unwrap();
        assert_eq!(q.page().unwrap_err().status, 400);
        assert_eq!(q.flag("session").unwrap_err().status, 400);
        let q = Query::parse(Some("limit=999999999")).unwrap();
        assert_eq!(q.page().unwrap().limit, MAX_LIMIT);
        assert!(Query::parse(None).unwrap().0.is_empty());
    }
}
