//! Who may call the gateway. With `gateway.api_keys_file` set, every `/v1` route needs
//! `Authorization: Bearer KEY` (or `x-api-key: KEY`, as Anthropic clients send it): the key's
//! SHA-256 is compared with every known digest in constant time. Keys carry an id (logs and
//! metrics show it, never the key), limits (`policy::limits`), a priority and an admin flag; the
//! file is read again when it changes, so a revoked key stops working within seconds.
//!
//! The admin routes (`/debug/*`) need an admin key when keys are configured, and without keys
//! they answer loopback clients only. POSTs must be JSON (a browser form cannot send one
//! cross-site), and CORS headers are sent only for the configured origins.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use policy::limits::{KeyLimits, Limit, Limited};
use runtime::config::{ConfigError, GatewaySection, KeysFile, sha256};
use subtle::ConstantTimeEq;

use super::Gateway;
use super::error::ApiError;

/// How often the keys file is checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The caller of a request, once its key was checked.
#[derive(Clone)]
pub struct Caller {
    pub id: String,
    pub priority: i32,
    pub admin: bool,
    limits: Arc<Mutex<KeyLimits>>,
}

struct Known {
    digest: [u8; 32],
    caller: Caller,
    revoked: bool,
}

/// The keys in force.
#[derive(Default)]
struct KeyRing {
    keys: Vec<Known>,
}

impl KeyRing {
    /// Build from `file`, keeping the limit state of ids that were known before.
    fn new(file: KeysFile, before: Option<&KeyRing>, now: Duration) -> Self {
        let old: HashMap<&str, &Caller> =
            before.map(|r| r.keys.iter().map(|k| (k.caller.id.as_str(), &k.caller)).collect()).unwrap_or_default();
        let keys = file
            .keys
            .into_iter()
            .filter_map(|k| {
                let digest = k.digest()?;
                let limits = match old.get(k.id.as_str()) {
                    Some(c) => c.limits.clone(),
                    None => Arc::new(Mutex::new(KeyLimits::new(k.requests_per_second, k.tokens_per_second, now))),
                };
                let caller = Caller { id: k.id, priority: k.priority, admin: k.admin, limits };
                Some(Known { digest, caller, revoked: k.revoked })
            })
            .collect();
        Self { keys }
    }

    /// The key whose digest matches, looking at every key whatever matched (no early exit).
    fn find(&self, presented: &str) -> Option<&Known> {
        let digest = sha256(presented.as_bytes());
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&digest)) {
                found = Some(k);
            }
        }
        found
    }
}

/// Why a call was refused (the `reason` label of `armature_http_refused_total`).
fn refused(reason: &'static str) {
    metrics::counter!("armature_http_refused_total", "reason" => reason).increment(1);
}

/// The gateway's keys and the file they come from.
pub struct Auth {
    path: Option<PathBuf>,
    ring: RwLock<Option<Arc<KeyRing>>>,
    modified: Mutex<Option<SystemTime>>,
    epoch: Instant,
    cors: Vec<String>,
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Auth {
    /// The keys of `gateway.api_keys_file` (`ARMATURE_API_KEYS_FILE` overrides it); none when
    /// neither is set. A file that does not parse is a configuration error.
    pub fn load(config: &GatewaySection) -> Result<Self, ConfigError> {
        let path = std::env::var_os("ARMATURE_API_KEYS_FILE")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| config.api_keys_file.clone());
        let epoch = Instant::now();
        let (ring, stamp) = match &path {
            Some(p) => {
                let stamp = modified(p);
                (Some(Arc::new(KeyRing::new(KeysFile::load(p)?, None, Duration::ZERO))), stamp)
            }
            None => (None, None),
        };
        Ok(Self {
            path,
            ring: RwLock::new(ring),
            modified: Mutex::new(stamp),
            epoch,
            cors: config.cors_origins.clone(),
        })
    }

    /// Whether callers need a key.
    pub fn required(&self) -> bool {
        self.path.is_some()
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn ring(&self) -> Option<Arc<KeyRing>> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read the keys file again when it changed; a file that no longer parses keeps the keys in
    /// force (and says why in the log).
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let stamp = modified(path);
        {
            let mut last = self.modified.lock().unwrap_or_else(|p| p.into_inner());
            if *last == stamp {
                return;
            }
            *last = stamp;
        }
        match KeysFile::load(path) {
            Ok(file) => {
                let before = self.ring();
                let ring = KeyRing::new(file, before.as_deref(), self.now());
                tracing::info!(keys = ring.keys.len(), path = %path.display(), "API keys reloaded");
                *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ring));
            }
            Err(e) => tracing::error!("API keys not reloaded, the previous ones stay in force: {e}"),
        }
    }

    /// Check the file for changes every second, for as long as the process runs.
    pub fn spawn_reload(self: &Arc<Self>) {
        if self.path.is_none() {
            return;
        }
        let auth = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(auth) = auth.upgrade() else { return };
                auth.reload_if_changed();
            }
        });
    }

    /// The caller a request's headers name: `Ok(None)` when no keys are configured.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        let Some(ring) = self.ring() else { return Ok(None) };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let Some(presented) = bearer else {
            refused("missing_key");
            return Err(ApiError::unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY`.",
            ));
        };
        match ring.find(presented) {
            Some(k) if !k.revoked => Ok(Some(k.caller.clone())),
            _ => {
                refused("invalid_key");
                Err(ApiError::unauthorized("Incorrect API key provided."))
            }
        }
    }

    /// Admit a request of `prompt_tokens` under `caller`'s limits.
    pub fn admit(&self, caller: &Caller, prompt_tokens: usize) -> Result<(), ApiError> {
        let now = self.now();
        let tokens = u32::try_from(prompt_tokens).unwrap_or(u32::MAX);
        let result = caller.limits.lock().unwrap_or_else(|p| p.into_inner()).admit(tokens, now);
        result.map_err(|Limited { limit, retry_after }| {
            let (reason, what) = match limit {
                Limit::Requests => ("rate_requests", "requests"),
                Limit::Tokens => ("rate_tokens", "tokens"),
            };
            refused(reason);
            ApiError::rate_limited(&caller.id, what, retry_after)
        })
    }

    /// Count a finished request's completion tokens against `caller`'s token limit.
    pub fn charge(&self, caller: &Caller, completion_tokens: u32) {
        caller.limits.lock().unwrap_or_else(|p| p.into_inner()).charge_tokens(completion_tokens, self.now());
    }
}

/// An error in the shape of the API the path belongs to (Anthropic's for `/v1/messages`).
fn refusal(path: &str, e: ApiError) -> Response {
    if path.starts_with("/v1/messages") { super::anthropic::error_response(e) } else { e.into_response() }
}

/// `/v1/*`: the caller's key, checked, goes into the request's extensions.
pub async fn require_key(State(gw): State<Arc<Gateway>>, mut req: Request, next: Next) -> Response {
    match gw.auth.identify(req.headers()) {
        Ok(caller) => {
            if let Some(caller) = caller {
                req.extensions_mut().insert(caller);
            }
            next.run(req).await
        }
        Err(e) => refusal(req.uri().path(), e),
    }
}

/// `/debug/*`: an admin key when keys are configured; a loopback client when none are.
pub async fn require_admin(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let allowed = match gw.auth.identify(req.headers()) {
        Ok(Some(caller)) => caller.admin,
        Ok(None) => req.extensions().get::<ConnectInfo<SocketAddr>>().is_some_and(|c| c.0.ip().is_loopback()),
        Err(e) => return e.into_response(),
    };
    if !allowed {
        refused("admin");
        let why = if gw.auth.required() {
            "The admin routes need an admin key."
        } else {
            "The admin routes answer loopback clients only while no API keys are configured."
        };
        return ApiError::forbidden(why).into_response();
    }
    next.run(req).await
}

/// POSTs must carry `Content-Type: application/json`.
/// Requests whose headers pass `serve::MAX_HEADERS` or `serve::MAX_HEADER_BYTES`: a 431 in the
/// API's error shape.
pub async fn header_limits(req: Request, next: Next) -> Response {
    let count = req.headers().len();
    let bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if count > super::serve::MAX_HEADERS || bytes > super::serve::MAX_HEADER_BYTES {
        refused("header_size");
        return refusal(req.uri().path(), ApiError::headers_too_large(bytes, count));
    }
    next.run(req).await
}

pub async fn require_json(req: Request, next: Next) -> Response {
    if req.method() == Method::POST {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            refused("media_type");
            return refusal(req.uri().path(), ApiError::unsupported_media_type());
        }
    }
    next.run(req).await
}

/// CORS for the configured origins only: preflights answered, responses marked.
pub async fn cors(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.filter(|o| o.to_str().is_ok_and(|o| gw.auth.cors.iter().any(|a| a == o || a == "*")));
    let Some(origin) = allowed else { return next.run(req).await };
    let mut resp =
        if req.method() == Method::OPTIONS { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-api-key, x-request-id"),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::new(KeysFile::parse(text, "keys.toml").unwrap(), None, Duration::ZERO)
    }

    #[test]
    fn keys_are_found_by_digest_and_revoked_ones_are_not_callers() {
        let r = ring(
            "[[keys]]\nid = \"a\"\nkey = \"sk-aaaaaaaaaaaaaaaa\"\npriority = 2\n\
             [[keys]]\nid = \"b\"\nkey = \"sk-bbbbbbbbbbbbbbbb\"\nrevoked = true\n",
        );
        let a = r.find("sk-aaaaaaaaaaaaaaaa").unwrap();
        assert_eq!((a.caller.id.as_str(), a.caller.priority, a.revoked), ("a", 2, false));
        assert!(r.find("sk-bbbbbbbbbbbbbbbb").unwrap().revoked);
        assert!(r.find("sk-aaaaaaaaaaaaaaab").is_none());
        assert!(r.find("").is_none());
    }

    #[test]
    fn a_reload_keeps_the_limit_state_of_known_ids() {
        let text = "[[keys]]\nid = \"a\"\nkey = \"sk-aaaaaaaaaaaaaaaa\"\nrequests_per_second = 1.0\n";
        let first = ring(text);
        let a = &first.find("sk-aaaaaaaaaaaaaaaa").unwrap().caller;
        assert!(a.limits.lock().unwrap().admit(1, Duration::ZERO).is_ok());
        let second = KeyRing::new(KeysFile::parse(text, "keys.toml").unwrap(), Some(&first), Duration::ZERO);
        let again = &second.find("sk-aaaaaaaaaaaaaaaa").unwrap().caller;
        assert!(
            again.limits.lock().unwrap().admit(1, Duration::ZERO).is_err(),
            "the bucket was not refilled by a reload"
        );
    }
}
