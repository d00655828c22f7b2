//! The control API: `POST /control/*` on the admin listener changes the
//! running fleets (send, scale, pause, resume, drop, rotate, reload).
//!
//! Every request needs `Authorization: Bearer TOKEN` unless the listener
//! was declared trusted; the token is compared in constant time. A request
//! is parsed and checked whole before anything changes: a bad one gets a
//! JSON error naming the field and changes nothing. `docs/admin.md` has
//! the requests with curl examples.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use wsfleet_proto::Message;

use crate::fleet::{ConnId, ControlError, FleetControl, FleetSendError, SlotId};

/// The largest request body (a message to send, base64 included).
pub const MAX_CONTROL_BODY: usize = 1 << 20;
/// How long reading a request body may take.
const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a send waits for room in a full inbox before it answers 503
/// (the message is then not queued).
const SEND_PATIENCE: Duration = Duration::from_secs(5);

/// The pools the control API acts on, by name: shared with the
/// application, which adds and replaces them while it runs (a reload).
#[derive(Clone, Default)]
pub struct ControlPools(Arc<RwLock<BTreeMap<String, FleetControl>>>);

impl ControlPools {
    /// No pool yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds pool `name`, or replaces the fleet it names.
    pub fn insert(&self, name: impl Into<String>, control: FleetControl) {
        self.write().insert(name.into(), control);
    }

    /// Removes pool `name`.
    pub fn remove(&self, name: &str) -> Option<FleetControl> {
        self.write().remove(name)
    }

    /// The pool `name`.
    pub fn get(&self, name: &str) -> Option<FleetControl> {
        self.read().get(name).cloned()
    }

    /// Every pool's monitor, by name.
    pub fn monitors(&self) -> Vec<crate::fleet::FleetMonitor> {
        self.read().values().map(FleetControl::monitor).collect()
    }

    /// Every pool's name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, FleetControl>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, FleetControl>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for ControlPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ControlPools").field(&self.names()).finish()
    }
}

/// Who may use the control API.
#[derive(Clone)]
pub enum ControlAuth {
    /// Requests must carry `Authorization: Bearer` with this token.
    Token(Arc<[u8]>),
    /// No token: whoever reaches the listener may change the fleet (a
    /// listener on a trusted network or behind an authenticating proxy).
    Trusted,
}

impl std::fmt::Debug for ControlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(..)"),
            Self::Trusted => f.write_str("Trusted"),
        }
    }
}

/// What `POST /control/reload` runs: re-reads the configuration and
/// applies the difference; `Ok` with a summary, `Err` with why nothing
/// changed.
pub type ReloadHook =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// The control API's state: the pools, who may act, the reload.
pub(super) struct Control {
    pub(super) pools: ControlPools,
    pub(super) auth: ControlAuth,
    pub(super) reload: Option<ReloadHook>,
}

/// A refused request: status, message, and the field at fault.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl Refusal {
    fn bad(field: &'static str, error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            field: Some(field.to_owned()),
        }
    }

    fn new(status: StatusCode, field: Option<&'static str>, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            field: field.map(str::to_owned),
        }
    }
}

type Answer = Result<Value, Refusal>;

impl Control {
    /// Answers a request under `/control/`.
    pub(super) async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            let mut response = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "the control API takes POST"}),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        if !self.authorized(&req) {
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"}),
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        let path = req.uri().path().to_owned();
        let answer = match read_body(req).await {
            Ok(body) => self.dispatch(&path, &body).await,
            Err(refusal) => Err(refusal),
        };
        match answer {
            Ok(value) => {
                tracing::info!(path, answer = %value, "control request applied");
                json_response(StatusCode::OK, &value)
            }
            Err(r) => {
                tracing::info!(
                    path,
                    status = r.status.as_u16(),
                    error = r.error,
                    field = r.field.as_deref(),
                    "control request refused"
                );
                json_response(r.status, &json!({"error": r.error, "field": r.field}))
            }
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let ControlAuth::Token(token) = &self.auth else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        same_secret(given, token)
    }

    async fn dispatch(&self, path: &str, body: &[u8]) -> Answer {
        match path {
            "/control/send" => self.send(parse(body)?).await,
            "/control/scale" => {
                let req: ScaleRequest = parse(body)?;
                let (name, pool) = self.pool(req.pool.as_deref())?;
                let scaled = pool.set_connections(req.connections).await.map_err(|e| {
                    let field = match e {
                        ControlError::Subscriptions(_) => StatusCode::CONFLICT,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    Refusal::new(field, Some("connections"), e.to_string())
                })?;
                Ok(json!({"pool": name, "scaled": scaled}))
            }
            "/control/pause" | "/control/resume" => {
                let req: PoolRequest = parse(body)?;
                let (name, pool) = self.pool(req.pool.as_deref())?;
                let changed = if path.ends_with("pause") {
                    pool.pause().await
                } else {
                    pool.resume().await
                };
                Ok(json!({"pool": name, "paused": pool.is_paused(), "changed": changed}))
            }
            "/control/drop" | "/control/rotate" => {
                let req: OneRequest = parse(body)?;
                let (name, pool) = self.pool(req.pool.as_deref())?;
                let drop = path.ends_with("drop");
                let (slot, connection) = match (req.connection, req.slot) {
                    (Some(conn), None) => {
                        let conn = ConnId(conn);
                        let slot = if drop {
                            pool.drop_connection(conn)
                        } else {
                            pool.rotate_connection(conn)
                        };
                        (slot.map_err(|e| not_found("connection", e))?, Some(conn))
                    }
                    (None, Some(slot)) => {
                        let slot = SlotId(slot);
                        let conn = if drop {
                            pool.drop_slot(slot)
                        } else {
                            pool.rotate_slot(slot)
                        };
                        (slot, conn.map_err(|e| not_found("slot", e))?)
                    }
                    _ => {
                        return Err(Refusal::bad(
                            "connection",
                            "name exactly one of connection (an id) or slot",
                        ));
                    }
                };
                Ok(json!({"pool": name, "slot": slot, "connection": connection,
                    "requested": if drop { "drop" } else { "rotate" }}))
            }
            "/control/reload" => {
                let _: Empty = parse(body)?;
                let Some(reload) = &self.reload else {
                    return Err(Refusal::new(
                        StatusCode::NOT_FOUND,
                        None,
                        "this process has no configuration to reload",
                    ));
                };
                match reload().await {
                    Ok(summary) => Ok(json!({"reloaded": summary})),
                    Err(why) => Err(Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, None, why)),
                }
            }
            _ => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                None,
                "control routes: /control/send /control/scale /control/pause /control/resume \
                 /control/drop /control/rotate /control/reload",
            )),
        }
    }

    /// The pool a request names, or the only one.
    fn pool(&self, name: Option<&str>) -> Result<(String, FleetControl), Refusal> {
        match name {
            Some(name) => self
                .pools
                .get(name)
                .map(|p| (name.to_owned(), p))
                .ok_or_else(|| {
                    Refusal::new(
                        StatusCode::NOT_FOUND,
                        Some("pool"),
                        format!(
                            "no pool {name:?} (pools: {})",
                            self.pools.names().join(", ")
                        ),
                    )
                }),
            None => {
                let names = self.pools.names();
                match names.as_slice() {
                    [only] => Ok((
                        only.clone(),
                        self.pools.get(only).ok_or_else(|| {
                            Refusal::new(StatusCode::NOT_FOUND, Some("pool"), "the pool went away")
                        })?,
                    )),
                    [] => Err(Refusal::new(
                        StatusCode::NOT_FOUND,
                        Some("pool"),
                        "no pool runs",
                    )),
                    _ => Err(Refusal::bad(
                        "pool",
                        format!("several pools run ({}): name one", names.join(", ")),
                    )),
                }
            }
        }
    }

    async fn send(&self, req: SendRequest) -> Answer {
        let message = match (req.text, req.binary) {
            (Some(text), None) => Message::text(text),
            (None, Some(b64)) => Message::binary(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| Refusal::bad("binary", format!("not base64: {e}")))?,
            ),
            _ => {
                return Err(Refusal::bad(
                    "text",
                    "give exactly one of text or binary (base64)",
                ));
            }
        };
        let (name, pool) = self.pool(req.pool.as_deref())?;
        let broadcast = matches!(req.to, To::All);
        let sent = tokio::time::timeout(SEND_PATIENCE, async {
            match req.to {
                To::Any => pool
                    .send(message)
                    .await
                    .map(|conn| json!({"connection": conn})),
                To::All => Ok(json!({"all": pool.broadcast(message).await})),
                To::Connection(id) => pool
                    .send_to(ConnId(id), message)
                    .await
                    .map(|()| json!({"connection": id})),
                To::Slot(slot) => pool
                    .send_to_slot(SlotId(slot), message)
                    .await
                    .map(|conn| json!({"connection": conn, "slot": slot})),
            }
        })
        .await
        .map_err(|_| {
            // A broadcast stopped midway has reached the connections before
            // the full one: say so, not "not sent".
            let what = if broadcast {
                "a connection's queue stayed full: the broadcast stopped there (the \
                 connections before it have the message)"
            } else {
                "the connection's queue stayed full: not sent"
            };
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                format!("{what} (waited {SEND_PATIENCE:?})"),
            )
        })?;
        match sent {
            Ok(to) => Ok(json!({"pool": name, "sent_to": to})),
            Err(FleetSendError::NoReadyConnection(_)) => Err(Refusal::new(
                StatusCode::CONFLICT,
                None,
                "no ready connection: not sent",
            )),
            Err(e) => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                Some("to"),
                format!("{e}: not sent"),
            )),
        }
    }
}

fn not_found(field: &'static str, e: ControlError) -> Refusal {
    Refusal::new(StatusCode::NOT_FOUND, Some(field), e.to_string())
}

/// Compares a given secret with the token without stopping at the first
/// difference, so the time taken does not tell how much of it matched.
fn same_secret(given: &[u8], token: &[u8]) -> bool {
    let mut diff = given.len() ^ token.len();
    for i in 0..given.len().max(token.len()) {
        let a = given.get(i).copied().unwrap_or(0);
        let b = token.get(i).copied().unwrap_or(0);
        diff |= usize::from(a ^ b);
    }
    std::hint::black_box(diff) == 0
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    let body = Limited::new(req.into_body(), MAX_CONTROL_BODY);
    match tokio::time::timeout(BODY_DEADLINE, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!("request body unreadable or over {MAX_CONTROL_BODY} bytes: {e}"),
        )),
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            None,
            format!("request body not read within {BODY_DEADLINE:?}"),
        )),
    }
}

/// Parses a JSON body (an empty one is `{}`). An error names the field at
/// fault: the one serde names, or else the top-level key without which the
/// body parses (or only lacks that key).
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Refusal> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Refusal::bad("body", format!("not JSON: {e}")))?;
    serde_json::from_value::<T>(value.clone()).map_err(|e| {
        let text = e.to_string();
        let named = text
            .split('`')
            .nth(1)
            .filter(|name| value.get(name).is_some() || text.starts_with("missing field"))
            .map(str::to_owned);
        let field = named
            .or_else(|| culprit::<T>(&value))
            .unwrap_or_else(|| "body".into());
        Refusal {
            status: StatusCode::BAD_REQUEST,
            error: format!("bad request: {text}"),
            field: Some(field),
        }
    })
}

/// The top-level key of `value` whose removal makes it parse as `T` (or
/// only lack that key).
fn culprit<T: for<'de> Deserialize<'de>>(value: &Value) -> Option<String> {
    let object = value.as_object()?;
    object.keys().find_map(|key| {
        let mut without = object.clone();
        without.remove(key);
        match serde_json::from_value::<T>(Value::Object(without)) {
            Ok(_) => Some(key.clone()),
            Err(e) if e.to_string().contains(&format!("missing field `{key}`")) => {
                Some(key.clone())
            }
            Err(_) => None,
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolRequest {
    pool: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleRequest {
    pool: Option<String>,
    connections: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OneRequest {
    pool: Option<String>,
    connection: Option<u64>,
    slot: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    pool: Option<String>,
    #[serde(default)]
    to: To,
    text: Option<String>,
    binary: Option<String>,
}

/// Where a message goes: `"any"` ready connection (round robin), `"all"`,
/// `{"connection": ID}` or `{"slot": ID}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum To {
    #[default]
    Any,
    All,
    Connection(u64),
    Slot(u32),
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3cret!", b"s3cret"));
        assert!(!same_secret(b"S3cret", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }

    #[test]
    fn a_bad_body_names_its_field() {
        let field = |e: Refusal| e.field.unwrap_or_default();
        let e = parse::<ScaleRequest>(br#"{"connections": "many", "pool": "a"}"#).unwrap_err();
        assert_eq!(field(e), "connections");
        let e = parse::<ScaleRequest>(br#"{"pool": "a"}"#).unwrap_err();
        assert_eq!(field(e), "connections");
        let e = parse::<PoolRequest>(br#"{"pol": "a"}"#).unwrap_err();
        assert_eq!(field(e), "pol");
        let e = parse::<SendRequest>(br#"{"to": {"conection": 1}, "text": "x"}"#).unwrap_err();
        assert_eq!(field(e), "to");
        let e = parse::<SendRequest>(br#"{"to": "all", "text": 5}"#).unwrap_err();
        assert_eq!(field(e), "text");
        let e = parse::<PoolRequest>(b"{").unwrap_err();
        assert_eq!(field(e), "body");
        assert!(parse::<PoolRequest>(b"").is_ok(), "an empty body is {{}}");
    }

    #[test]
    fn destinations_parse_as_documented() {
        let to = |body: &str| parse::<SendRequest>(body.as_bytes()).map(|r| r.to);
        assert!(matches!(to(r#"{"text": "x"}"#), Ok(To::Any)));
        assert!(matches!(to(r#"{"to": "all", "text": "x"}"#), Ok(To::All)));
        assert!(matches!(
            to(r#"{"to": {"connection": 7}, "text": "x"}"#),
            Ok(To::Connection(7))
        ));
        assert!(matches!(
            to(r#"{"to": {"slot": 2}, "text": "x"}"#),
            Ok(To::Slot(2))
        ));
    }
}
