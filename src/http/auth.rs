//! Credentials: API keys per role, users with passwords, login tokens, and
//! the per-request check against the route table (`access`).
//!
//! Owns: the key and user file formats and their validation, the
//! per-shard [`Guard`] (key digests, token keys, the login rate limiter),
//! password hashing and verification, token issue and validation,
//! browser session cookies (issue, validation, and the cross-site rule for
//! requests they authenticate), and worker-id scopes of worker keys.
//!
//! Must not: decide a route's role (that is `access::need`), look at the
//! raw path, compare secrets with an early exit, block the shard on
//! password hashing (verification runs off the shard), or keep session
//! state per shard (a cookie issued by one shard is checked by any other).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hyper::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use hyper::{HeaderMap, Method};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::access::{self, Need};
use super::error::ApiError;
use super::router::Route;
use crate::config::{Config, SESSION_TTL_MAX, SESSION_TTL_MIN};
use crate::model::credential::{glob_match, verify_password, ApiKey, Role};

/// The claims of a signed token (a login token or a session cookie) that
/// `keys` verify: signature, expiry, and a length within
/// `MAX_CREDENTIAL`.
fn verified<C: serde::de::DeserializeOwned>(
    keys: &(EncodingKey, DecodingKey, Validation),
    raw: &[u8],
) -> Option<C> {
    let (_, dec, validation) = keys;
    if raw.is_empty() || raw.len() > MAX_CREDENTIAL {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    Some(
        jsonwebtoken::decode::<C>(text, dec, validation)
            .ok()?
            .claims,
    )
}

/// Who made a request, as established by [`Guard::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    /// No credential (open coordinator, or a public route).
    Anonymous,
    /// Index into the guard's keys.
    Key(u32),
    /// Index into the configured users (a login token).
    User(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub who: Who,
    pub role: Option<Role>,
}

impl Grant {
    pub(crate) const ANONYMOUS: Grant = Grant {
        who: Who::Anonymous,
        role: None,
    };
}

/// Token claims, as the originals' tokens carry them (`sub` = username).
#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iat: u64,
    exp: u64,
}

/// Session cookie claims. `who` names the credential the session was
/// opened with, by index into this config's keys or users: the signing key
/// is derived from all of them ([`Config::session_secret`]), so an index
/// from another config never validates.
#[derive(Serialize, Deserialize)]
struct SessionClaims {
    who: SessionWho,
    role: Role,
    iat: u64,
    exp: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum SessionWho {
    Key(u32),
    User(u32),
}

/// Name of the browser session cookie.
pub(crate) const SESSION_COOKIE: &str = "coordinator_session";

/// A session just opened: the cookie's value and when it expires.
pub(crate) struct Session {
    pub role: Role,
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub max_age: u64,
}

/// Which request header carried the credential: a cookie is sent by the
/// browser on its own, so only cookie requests get the cross-site check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Header,
    Cookie,
}

/// One key's digest and what it grants.
struct Entry {
    digest: [u8; 32],
    role: Role,
    workers: Vec<String>,
}

/// Longest credential we look at; anything longer is refused unread.
const MAX_CREDENTIAL: usize = 8192;

/// Per-shard authentication state, built once from the config.
pub(crate) struct Guard {
    /// Any key or user configured: otherwise every route is open.
    enabled: bool,
    protect_metrics: bool,
    keys: Vec<Entry>,
    users: Vec<(String, Role, String)>,
    user_index: HashMap<String, u32>,
    tokens: Option<(EncodingKey, DecodingKey, Validation)>,
    token_expiry: Duration,
    /// Session cookie signing (present whenever the guard is enabled).
    sessions: Option<(EncodingKey, DecodingKey, Validation)>,
    session_ttl: Duration,
    /// `Secure` on the cookie: the public URL is `https://`.
    secure_cookie: bool,
    /// Origins besides the request's own host that may send state-changing
    /// requests by cookie: the explicit CORS origins (`*` is not one).
    csrf_origins: Vec<String>,
    limiter: RefCell<LoginLimiter>,
    verifying: Cell<u32>,
}

/// Password checks in flight per shard (each holds ~19 MiB on its thread).
const MAX_VERIFYING: u32 = 4;

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Guard {
    pub(crate) fn new(cfg: &Config) -> Guard {
        let mut all: Vec<ApiKey> = cfg
            .api_key
            .iter()
            .map(|k| ApiKey::new(k, Role::Admin))
            .collect();
        all.extend(cfg.keys.iter().cloned());
        // An empty key would match an empty header: never usable (main
        // refuses them; this guards library users too).
        let keys: Vec<Entry> = all
            .into_iter()
            .filter(|k| !k.key.0.is_empty())
            .map(|k| Entry {
                digest: sha256(k.key.0.as_bytes()),
                role: k.role,
                workers: k.workers,
            })
            .collect();
        let users: Vec<(String, Role, String)> = cfg
            .users
            .iter()
            .map(|u| (u.username.clone(), u.role, u.password_hash.0.clone()))
            .collect();
        let user_index = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.0.clone(), i as u32))
            .collect();
        let tokens = cfg
            .jwt_secret
            .as_ref()
            .filter(|s| !s.0.is_empty())
            .map(|s| {
                let mut v = Validation::new(Algorithm::HS256);
                // Expiry is exact: a 1 s token is dead after 1 s.
                v.leeway = 0;
                v.set_required_spec_claims(&["exp", "sub"]);
                (
                    EncodingKey::from_secret(s.0.as_bytes()),
                    DecodingKey::from_secret(s.0.as_bytes()),
                    v,
                )
            });
        let enabled = !keys.is_empty() || !users.is_empty();
        let sessions = enabled.then(|| {
            let secret = cfg.session_secret();
            let mut v = Validation::new(Algorithm::HS256);
            v.leeway = 0;
            v.set_required_spec_claims(&["exp"]);
            (
                EncodingKey::from_secret(&secret),
                DecodingKey::from_secret(&secret),
                v,
            )
        });
        let secure_cookie = cfg
            .public_url
            .as_deref()
            .is_some_and(|u| u.len() >= 8 && u[..8].eq_ignore_ascii_case("https://"));
        Guard {
            enabled,
            sessions,
            session_ttl: cfg.session_ttl.clamp(SESSION_TTL_MIN, SESSION_TTL_MAX),
            secure_cookie,
            csrf_origins: cfg
                .allowed_origins
                .iter()
                .filter(|o| *o != "*")
                .cloned()
                .collect(),
            protect_metrics: cfg.protect_metrics,
            keys,
            users,
            user_index,
            tokens,
            token_expiry: cfg.token_expiry,
            limiter: RefCell::new(LoginLimiter::new(
                cfg.login_max_failures,
                cfg.login_window,
                LIMITER_CAP,
            )),
            verifying: Cell::new(0),
        }
    }

    /// Establishes who is calling and whether `route` lets them.
    /// 401: no credential, or a bad token or session cookie; 403: a key we
    /// do not know (as before), a valid credential whose role is not
    /// enough, or a state-changing request by cookie from another site.
    pub(crate) fn check(
        &self,
        route: Route,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Grant, ApiError> {
        if !self.enabled {
            // Open coordinator; only the token routes look at credentials.
            return if route == Route::AuthVerify {
                self.authenticate(headers).map(|(g, _)| g)
            } else {
                Ok(Grant::ANONYMOUS)
            };
        }
        let need = access::need(route, self.protect_metrics);
        if need == Need::Public {
            return Ok(Grant::ANONYMOUS);
        }
        let (grant, via) = self.authenticate(headers)?;
        if via == Via::Cookie {
            self.same_site(method, headers)?;
        }
        match grant.role {
            Some(role) if need.allows(role) => Ok(grant),
            Some(role) => Err(ApiError::Forbidden(format!(
                "Not enough permissions: a {} credential may not call this route",
                role.as_str()
            ))),
            None => Err(ApiError::MissingApiKey),
        }
    }

    /// The request's credential: the headers first (they win over a
    /// cookie sent along), then the session cookie.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(Grant, Via), ApiError> {
        if let Some(g) = self.header_credential(headers) {
            return g.map(|g| (g, Via::Header));
        }
        match session_cookie(headers) {
            Some(c) => self
                .session(c)
                .map(|g| (g, Via::Cookie))
                .ok_or(ApiError::InvalidToken),
            None => Err(ApiError::MissingApiKey),
        }
    }

    /// `X-API-Key` or `Authorization`; `None` when neither is sent.
    fn header_credential(&self, headers: &HeaderMap) -> Option<Result<Grant, ApiError>> {
        if let Some(k) = headers.get("x-api-key") {
            let k = k.as_bytes();
            return Some(self.find_key(k).ok_or(ApiError::InvalidApiKey));
        }
        let auth = headers.get(AUTHORIZATION)?.as_bytes();
        if auth.len() < 7 || !auth[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(Err(ApiError::InvalidToken));
        }
        let cred = auth[7..].trim_ascii();
        if let Some(g) = self.find_key(cred) {
            return Some(Ok(g));
        }
        Some(self.token(cred).ok_or(ApiError::InvalidToken))
    }

    /// The cross-site rule for requests authenticated by the session
    /// cookie. `SameSite=Strict` already keeps the cookie off cross-site
    /// requests in current browsers; this holds without it (older
    /// browsers, a sibling subdomain counting as same-site). A
    /// state-changing method needs an `Origin` of this site (its `Host`) or
    /// of an explicit CORS origin, or an `X-Requested-With` header, which a
    /// cross-site page cannot add without a preflight that names it.
    fn same_site(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
            || headers.contains_key("x-requested-with")
        {
            return Ok(());
        }
        let Some(origin) = headers.get(ORIGIN).and_then(|o| o.to_str().ok()) else {
            return Err(ApiError::Forbidden(
                "Cross-site request refused: a request authenticated by the session cookie must send X-Requested-With or an Origin of this site".into(),
            ));
        };
        let own = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                let rest = origin
                    .strip_prefix("https://")
                    .or_else(|| origin.strip_prefix("http://"));
                rest.is_some_and(|r| !r.is_empty() && r.eq_ignore_ascii_case(host.trim()))
            });
        if own
            || self
                .csrf_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
        {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "Cross-site request refused: origin {origin:?} is neither this site nor an allowed origin"
            )))
        }
    }

    /// Compares the credential's digest with every key's, without an early
    /// exit, so neither which key matched nor how much of it shows in the
    /// timing (digests also hide the keys' lengths).
    fn find_key(&self, presented: &[u8]) -> Option<Grant> {
        if presented.is_empty() || presented.len() > MAX_CREDENTIAL {
            return None;
        }
        let d = sha256(presented);
        let mut found = 0u32;
        for (i, e) in self.keys.iter().enumerate() {
            found.conditional_assign(&(i as u32 + 1), e.digest.ct_eq(&d));
        }
        let i = found.checked_sub(1)?;
        Some(Grant {
            who: Who::Key(i),
            role: Some(self.keys[i as usize].role),
        })
    }

    fn token(&self, token: &[u8]) -> Option<Grant> {
        let claims: Claims = verified(self.tokens.as_ref()?, token)?;
        // The users file is the authority: a user removed or given another
        // role since the token was issued (and a restart) loses it.
        let i = *self.user_index.get(&claims.sub)?;
        let role = self.users[i as usize].1;
        (role == claims.role).then_some(Grant {
            who: Who::User(i),
            role: Some(role),
        })
    }

    /// A session cookie's grant: signed with this config's session key,
    /// unexpired, and naming a key or user that still has the role.
    fn session(&self, cookie: &[u8]) -> Option<Grant> {
        let c: SessionClaims = verified(self.sessions.as_ref()?, cookie)?;
        let (who, role) = match c.who {
            SessionWho::Key(i) => (Who::Key(i), self.keys.get(i as usize)?.role),
            SessionWho::User(i) => (Who::User(i), self.users.get(i as usize)?.1),
        };
        (role == c.role).then_some(Grant {
            who,
            role: Some(role),
        })
    }

    /// The coordinator is open (no key, no user): sessions mean nothing.
    pub(crate) fn is_open(&self) -> bool {
        !self.enabled
    }

    /// Whether session cookies carry `Secure`.
    pub(crate) fn secure_cookie(&self) -> bool {
        self.secure_cookie
    }

    /// Opens a browser session for the key in the body (`body_key`), else
    /// for the credential in the headers (`X-API-Key`, or `Authorization:
    /// Bearer` with a key or login token; never a cookie). 401 with none,
    /// 403 for an unknown `api_key` / `X-API-Key`, 401 for a bad bearer
    /// credential. Failed attempts count against the login limiter.
    pub(crate) fn open_session(
        &self,
        peer: Option<IpAddr>,
        body_key: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Session, ApiError> {
        let presented = body_key.is_some()
            || headers.contains_key("x-api-key")
            || headers.contains_key(AUTHORIZATION);
        if !presented {
            return Err(ApiError::MissingApiKey);
        }
        let ip = peer.map(limiter_key);
        if let Some(ip) = ip {
            // As for logins: counted first, given back on success.
            self.limiter
                .borrow_mut()
                .admit(ip, Instant::now())
                .map_err(|retry_after| ApiError::TooManyRequests { retry_after })?;
        }
        let grant = match body_key {
            Some(k) => self.find_key(k.as_bytes()).ok_or(ApiError::InvalidApiKey)?,
            None => self
                .header_credential(headers)
                .unwrap_or(Err(ApiError::MissingApiKey))?,
        };
        if let Some(ip) = ip {
            self.limiter.borrow_mut().refund(ip);
        }
        let who = match grant.who {
            Who::Key(i) => SessionWho::Key(i),
            Who::User(i) => SessionWho::User(i),
            Who::Anonymous => return Err(ApiError::MissingApiKey),
        };
        let role = grant.role.ok_or(ApiError::MissingApiKey)?;
        let (enc, _, _) = self
            .sessions
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("Cannot issue sessions now".into()))?;
        let iat = jsonwebtoken::get_current_timestamp();
        let max_age = self.session_ttl.as_secs();
        let claims = SessionClaims {
            who,
            role,
            iat,
            exp: iat + max_age,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, enc)
            .map_err(|_| ApiError::Unavailable("Cannot issue sessions now".into()))?;
        Ok(Session {
            role,
            token,
            expires_at: claims.exp,
            max_age,
        })
    }

    /// Does `Authorization` carry one of our keys or a valid login token?
    /// Then it is our credential and must not travel on to a worker.
    /// `grant` is what [`Guard::check`] established for this request: when
    /// it came from `Authorization` (no `X-API-Key` was sent) the answer is
    /// known without a second digest or token check, and a guard with no
    /// keys and no users owns no credential at all.
    pub(crate) fn authorization_is_ours(&self, grant: &Grant, headers: &HeaderMap) -> bool {
        let Some(auth) = headers.get(AUTHORIZATION) else {
            return false;
        };
        if grant.who != Who::Anonymous && !headers.contains_key("x-api-key") {
            return true;
        }
        if self.keys.is_empty() && self.tokens.is_none() {
            return false;
        }
        let auth = auth.as_bytes();
        let cred = if auth.len() >= 7 && auth[..7].eq_ignore_ascii_case(b"bearer ") {
            auth[7..].trim_ascii()
        } else {
            auth.trim_ascii()
        };
        self.find_key(cred).is_some() || self.token(cred).is_some()
    }

    /// The username behind a token grant.
    pub(crate) fn username(&self, grant: &Grant) -> Option<&str> {
        match grant.who {
            Who::User(i) => self.users.get(i as usize).map(|u| u.0.as_str()),
            _ => None,
        }
    }

    /// 403 unless the grant may act for worker `id`: only worker keys with
    /// `workers` patterns are limited.
    pub(crate) fn may_act_for(&self, grant: &Grant, id: &str) -> Result<(), ApiError> {
        let Who::Key(i) = grant.who else {
            return Ok(());
        };
        let e = &self.keys[i as usize];
        if e.workers.is_empty() || e.workers.iter().any(|p| glob_match(p, id)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "This key may not act for worker {id:?}"
            )))
        }
    }

    /// Checks a login and issues a token. Rate-limited per client address;
    /// the password check runs off the shard.
    pub(crate) async fn login(
        &self,
        peer: Option<IpAddr>,
        username: &str,
        password: String,
    ) -> Result<String, ApiError> {
        let now = Instant::now();
        let key = peer.map(limiter_key);
        if let Some(ip) = key {
            // Counted before checking, so parallel guesses are limited too;
            // a success gives its attempt back.
            self.limiter
                .borrow_mut()
                .admit(ip, now)
                .map_err(|retry_after| ApiError::TooManyRequests { retry_after })?;
        }
        let user = self
            .user_index
            .get(username)
            .map(|&i| &self.users[i as usize]);
        // An unknown name still costs one verification (against another
        // user's hash), so timing does not tell which names exist.
        let hash = match (user, self.users.first()) {
            (Some(u), _) | (None, Some(u)) => u.2.clone(),
            (None, None) => return Err(ApiError::BadLogin),
        };
        if self.verifying.get() >= MAX_VERIFYING {
            return Err(ApiError::Unavailable(
                "Too many logins in progress; retry shortly".into(),
            ));
        }
        self.verifying.set(self.verifying.get() + 1);
        let ok = {
            let _done = Decrement(&self.verifying);
            crate::runtime::off_shard("login", move || verify_password(&hash, &password)).await
        };
        let Some(ok) = ok else {
            return Err(ApiError::Unavailable("Cannot check passwords now".into()));
        };
        let user = match user {
            Some(u) if ok => u,
            _ => return Err(ApiError::BadLogin),
        };
        if let Some(ip) = key {
            self.limiter.borrow_mut().refund(ip);
        }
        self.issue(&user.0, user.1)
            .ok_or_else(|| ApiError::Unavailable("Cannot issue tokens now".into()))
    }

    fn issue(&self, username: &str, role: Role) -> Option<String> {
        let (enc, _, _) = self.tokens.as_ref()?;
        let iat = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: username.to_string(),
            role,
            iat,
            exp: iat + self.token_expiry.as_secs().max(1),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, enc).ok()
    }
}

/// The value of the first `coordinator_session` cookie, from any `Cookie`
/// header (HTTP/1.1 sends one, but several are harmless to read).
fn session_cookie(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get_all(COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let (name, value) = pair.trim_ascii().split_at_checked(SESSION_COOKIE.len())?;
            (name == SESSION_COOKIE.as_bytes())
                .then_some(value)?
                .strip_prefix(b"=")
                .map(<[u8]>::trim_ascii)
        })
    })
}

struct Decrement<'a>(&'a Cell<u32>);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Addresses tracked per shard by the login limiter.
const LIMITER_CAP: usize = 4096;

/// IPv6 clients usually own a whole /64: count them as one.
fn limiter_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Failed logins per address in a fixed window; bounded: when full,
/// expired entries go first, then the oldest.
pub(crate) struct LoginLimiter {
    max: u32,
    window: Duration,
    cap: usize,
    slots: HashMap<IpAddr, (Instant, u32)>,
}

impl LoginLimiter {
    pub(crate) fn new(max: u32, window: Duration, cap: usize) -> Self {
        LoginLimiter {
            max: max.max(1),
            window,
            cap: cap.max(1),
            slots: HashMap::new(),
        }
    }

    /// Counts an attempt; `Err(seconds)` when the address is over its limit.
    pub(crate) fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        if let Some((start, count)) = self.slots.get_mut(&ip) {
            let age = now.saturating_duration_since(*start);
            if age >= self.window {
                (*start, *count) = (now, 0);
            } else if *count >= self.max {
                let left = self.window - age;
                return Err(left.as_secs() + u64::from(left.subsec_nanos() > 0));
            }
            *count += 1;
            return Ok(());
        }
        if self.slots.len() >= self.cap {
            let window = self.window;
            self.slots
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if self.slots.len() >= self.cap {
                if let Some(oldest) = self.slots.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k) {
                    self.slots.remove(&oldest);
                }
            }
        }
        self.slots.insert(ip, (now, 1));
        Ok(())
    }

    /// A successful login does not count against its address.
    pub(crate) fn refund(&mut self, ip: IpAddr) {
        if let Some((_, count)) = self.slots.get_mut(&ip) {
            *count = count.saturating_sub(1);
        }
    }

    /// Addresses tracked (tests check the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::credential::{hash_password, parse_keys, parse_users, User};

    fn guard(tweak: impl FnOnce(&mut Config)) -> Guard {
        let mut cfg = Config::default();
        tweak(&mut cfg);
        Guard::new(&cfg)
    }

    fn with_key(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_and_roles() {
        let g = guard(|c| {
            c.api_key = Some("s3cret".into());
            c.keys = vec![
                ApiKey::new("wk", Role::Worker),
                ApiKey::new("ck", Role::Client),
            ];
        });
        let none = HeaderMap::new();
        assert!(matches!(
            g.check(Route::AdminStats, &Method::GET, &none),
            Err(ApiError::MissingApiKey)
        ));
        assert!(g.check(Route::Health, &Method::GET, &none).is_ok());
        assert!(matches!(
            g.check(
                Route::AdminStats,
                &Method::GET,
                &with_key("x-api-key", "s3creT")
            ),
            Err(ApiError::InvalidApiKey)
        ));
        assert!(g
            .check(
                Route::AdminStats,
                &Method::GET,
                &with_key("x-api-key", "s3cret")
            )
            .is_ok());
        let w = g
            .check(
                Route::Heartbeat,
                &Method::GET,
                &with_key("authorization", "Bearer wk"),
            )
            .unwrap();
        assert_eq!(w.role, Some(Role::Worker));
        assert!(matches!(
            g.check(
                Route::ServiceProxy,
                &Method::GET,
                &with_key("x-api-key", "wk")
            ),
            Err(ApiError::Forbidden(_))
        ));
        assert!(g
            .check(
                Route::ServiceProxy,
                &Method::GET,
                &with_key("x-api-key", "ck")
            )
            .is_ok());
        assert!(matches!(
            g.check(
                Route::ServiceProxy,
                &Method::GET,
                &with_key("authorization", "Bearer nope")
            ),
            Err(ApiError::InvalidToken)
        ));
        assert!(matches!(
            g.check(Route::NotFound, &Method::GET, &none),
            Err(ApiError::MissingApiKey)
        ));
    }

    #[test]
    fn open_without_credentials_and_empty_keys_never_match() {
        let g = guard(|c| c.keys = vec![ApiKey::new("", Role::Admin)]);
        assert!(!g.enabled);
        assert_eq!(
            g.check(Route::AdminStats, &Method::GET, &HeaderMap::new())
                .unwrap(),
            Grant::ANONYMOUS
        );
        assert!(g.find_key(b"").is_none());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; coordinator_session= t.o.k ;b=2")]);
        assert_eq!(session_cookie(&h), Some(&b"t.o.k"[..]));
        let h = headers(&[("cookie", "a=1"), ("cookie", "coordinator_session=x")]);
        assert_eq!(session_cookie(&h), Some(&b"x"[..]));
        for none in [
            "coordinator_sessionx=1",
            "xcoordinator_session=1",
            "coordinator_session",
        ] {
            assert_eq!(
                session_cookie(&headers(&[("cookie", none)])),
                None,
                "{none}"
            );
        }
    }

    #[test]
    fn sessions_round_trip_across_guards_and_follow_the_keys() {
        let tweak = |c: &mut Config| {
            c.keys = vec![
                ApiKey::new("ak", Role::Admin),
                ApiKey::new("ck", Role::Client),
            ];
        };
        let a = guard(tweak);
        // Another shard's guard, built from the same config.
        let b = guard(tweak);
        let s = a.open_session(None, Some("ck"), &HeaderMap::new()).unwrap();
        assert_eq!(s.role, Role::Client);
        assert_eq!(s.max_age, 12 * 3600);
        let cookie = format!("coordinator_session={}", s.token);
        let g = b
            .check(
                Route::ServicesList,
                &Method::GET,
                &headers(&[("cookie", &cookie)]),
            )
            .unwrap();
        assert_eq!(g.who, Who::Key(1));
        assert!(matches!(
            b.check(
                Route::AdminStats,
                &Method::GET,
                &headers(&[("cookie", &cookie)])
            ),
            Err(ApiError::Forbidden(_))
        ));
        // Headers win over the cookie.
        let h = headers(&[("cookie", &cookie), ("x-api-key", "ak")]);
        assert!(b.check(Route::AdminStats, &Method::GET, &h).is_ok());
        // Another key set: another signing key.
        let other = guard(|c| c.keys = vec![ApiKey::new("ck", Role::Client)]);
        assert!(other.session(s.token.as_bytes()).is_none());
        assert!(b.session(b"garbage").is_none());
        // Unknown key 403, none 401, a bearer key works too.
        assert!(matches!(
            a.open_session(None, Some("nope"), &HeaderMap::new()),
            Err(ApiError::InvalidApiKey)
        ));
        assert!(matches!(
            a.open_session(None, None, &HeaderMap::new()),
            Err(ApiError::MissingApiKey)
        ));
        let s = a
            .open_session(None, None, &headers(&[("authorization", "Bearer ak")]))
            .unwrap();
        assert_eq!(s.role, Role::Admin);
    }

    #[test]
    fn session_ttl_is_clamped() {
        let short = guard(|c| {
            c.api_key = Some("k".into());
            c.session_ttl = Duration::from_secs(1);
        });
        assert_eq!(short.session_ttl, SESSION_TTL_MIN);
        let long = guard(|c| {
            c.api_key = Some("k".into());
            c.session_ttl = Duration::from_secs(u64::MAX / 4);
        });
        assert_eq!(long.session_ttl, SESSION_TTL_MAX);
    }

    #[test]
    fn cross_site_rule() {
        let g = guard(|c| {
            c.api_key = Some("k".into());
            c.allowed_origins = vec!["https://dash.example".into(), "*".into()];
            c.public_url = Some("HTTPS://coord.example".into());
        });
        assert!(g.secure_cookie());
        let ok = |m: Method, h: &[(&str, &str)]| g.same_site(&m, &headers(h)).is_ok();
        assert!(ok(Method::GET, &[]));
        assert!(ok(Method::HEAD, &[]));
        assert!(!ok(Method::POST, &[]));
        assert!(!ok(Method::DELETE, &[("host", "coord.example")]));
        assert!(ok(Method::POST, &[("x-requested-with", "fetch")]));
        assert!(ok(
            Method::PUT,
            &[
                ("host", "coord.example:8080"),
                ("origin", "https://Coord.example:8080")
            ]
        ));
        assert!(!ok(
            Method::PUT,
            &[
                ("host", "coord.example:8080"),
                ("origin", "https://coord.example")
            ]
        ));
        assert!(ok(
            Method::POST,
            &[("host", "x"), ("origin", "https://dash.example")]
        ));
        // `*` in the CORS list does not open the cookie to every site.
        assert!(!ok(
            Method::POST,
            &[("host", "x"), ("origin", "https://evil.example")]
        ));
        assert!(!ok(Method::POST, &[("host", "null"), ("origin", "null")]));
        assert!(!guard(|c| c.public_url = Some("http://c.example".into())).secure_cookie());
    }

    #[test]
    fn worker_scopes() {
        let mut k = ApiKey::new("gk", Role::Worker);
        k.workers = vec!["gpu-*".into(), "edge-?".into()];
        let g = guard(|c| c.keys = vec![k, ApiKey::new("any", Role::Worker)]);
        let scoped = g.find_key(b"gk").unwrap();
        assert!(g.may_act_for(&scoped, "gpu-01").is_ok());
        assert!(g.may_act_for(&scoped, "edge-1").is_ok());
        assert!(g.may_act_for(&scoped, "cpu-01").is_err());
        let any = g.find_key(b"any").unwrap();
        assert!(g.may_act_for(&any, "cpu-01").is_ok());
    }

    #[test]
    fn globs() {
        assert!(glob_match("gpu-*", "gpu-"));
        assert!(glob_match("gpu-*", "gpu-a/b"));
        assert!(!glob_match("gpu-*", "xgpu-1"));
        assert!(glob_match("*-eu-*", "gpu-eu-7"));
        assert!(!glob_match("*-eu-*", "gpu-us-7"));
        assert!(glob_match("w?", "w1"));
        assert!(!glob_match("w?", "w12"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exac"));
    }

    #[test]
    fn key_and_user_files() {
        let keys = parse_keys(
            r#"
            [[keys]]
            key = "a"
            role = "worker"
            workers = ["gpu-*"]
            name = "gpu fleet"
            [[keys]]
            key = "b"
            role = "client"
            "#,
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].workers, vec!["gpu-*".to_string()]);
        assert_eq!(keys[1].role, Role::Client);
        assert!(format!("{:?}", keys[0]).contains("redacted"));
        assert!(!format!("{:?}", keys[0]).contains("\"a\""));
        assert!(parse_keys("[[keys]]\nkey = \"a\"\nrole = \"root\"\n").is_err());
        assert!(parse_keys("[[keys]]\nkey = \"a\"\nrole = \"admin\"\nextra = 1\n").is_err());
        let users = parse_users(
            "[[users]]\nusername = \"al\"\npassword_hash = \"$argon2id$x\"\nrole = \"admin\"\n",
        )
        .unwrap();
        assert_eq!(users[0].username, "al");
    }

    #[test]
    fn validation_refuses_weak_configs() {
        let ok = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate()
        };
        assert!(ok(&|_| {}).is_ok());
        assert!(ok(&|c| c.api_key = Some(String::new())).is_err());
        assert!(ok(&|c| c.keys = vec![ApiKey::new("", Role::Client)]).is_err());
        assert!(ok(&|c| {
            let mut k = ApiKey::new("k", Role::Client);
            k.workers = vec!["a*".into()];
            c.keys = vec![k];
        })
        .is_err());
        let user = User {
            username: "u".into(),
            password_hash: hash_password("pw").unwrap().as_str().into(),
            role: Role::Client,
        };
        assert!(ok(&|c| c.users = vec![user.clone()]).is_err(), "no secret");
        assert!(ok(&|c| {
            c.users = vec![user.clone()];
            c.jwt_secret = Some("short".into());
        })
        .is_err());
        assert!(ok(&|c| {
            c.users = vec![user.clone()];
            c.jwt_secret = Some("x".repeat(32).as_str().into());
        })
        .is_ok());
        assert!(ok(&|c| {
            c.users = vec![user.clone(), user.clone()];
            c.jwt_secret = Some("x".repeat(32).as_str().into());
        })
        .is_err());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("hunter2").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "hunter2"));
        assert!(!verify_password(&h, "hunter3"));
        assert!(!verify_password("garbage", "hunter2"));
    }

    #[test]
    fn tokens_round_trip_and_follow_the_users_file() {
        let user = User {
            username: "ann".into(),
            password_hash: "$argon2id$unused".into(),
            role: Role::Client,
        };
        let g = guard(|c| {
            c.users = vec![user.clone()];
            c.jwt_secret = Some("k".repeat(40).as_str().into());
        });
        let t = g.issue("ann", Role::Client).unwrap();
        let grant = g.token(t.as_bytes()).unwrap();
        assert_eq!(grant.role, Some(Role::Client));
        assert_eq!(g.username(&grant), Some("ann"));
        // Claims a role the user does not have: refused.
        let forged = g.issue("ann", Role::Admin).unwrap();
        assert!(g.token(forged.as_bytes()).is_none());
        assert!(g.token(b"not.a.token").is_none());
        // Another secret: refused.
        let other = guard(|c| {
            c.users = vec![user.clone()];
            c.jwt_secret = Some("z".repeat(40).as_str().into());
        });
        assert!(other.token(t.as_bytes()).is_none());
    }

    #[test]
    fn limiter_counts_refunds_and_stays_bounded() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut l = LoginLimiter::new(2, Duration::from_secs(60), 3);
        assert!(l.admit(ip, t0).is_ok());
        assert!(l.admit(ip, t0).is_ok());
        assert_eq!(l.admit(ip, t0 + Duration::from_millis(500)), Err(60));
        l.refund(ip);
        assert!(l.admit(ip, t0).is_ok());
        assert!(
            l.admit(ip, t0 + Duration::from_secs(60)).is_ok(),
            "new window"
        );
        for i in 0..10u8 {
            let other = IpAddr::from([10, 0, 1, i]);
            assert!(l.admit(other, t0 + Duration::from_secs(61)).is_ok());
            assert!(l.len() <= 3);
        }
        assert_eq!(
            limiter_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}
