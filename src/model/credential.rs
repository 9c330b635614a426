//! Credentials as configured: roles, API keys (with worker-id scopes),
//! users with argon2 password hashes, the key and user file formats, and
//! the glob that matches a worker key's scope.
//!
//! Plain data and pure functions, so the configuration can hold them and
//! the HTTP layer's guard can check requests against them; the checking
//! itself (digests, tokens, rate limits) belongs to the HTTP layer.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A role. `Admin` may call every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Worker,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Role::Client),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?} (expected admin, worker or client)"
            )),
        }
    }
}

/// A secret string that never shows in `Debug` output (the config is
/// logged and printed in errors).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

/// One API key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: Secret,
    pub role: Role,
    /// Worker keys only: glob patterns (`*`, `?`) of the worker ids this
    /// key may act for; empty = any.
    #[serde(default)]
    pub workers: Vec<String>,
    /// A label for the operator (which fleet, issued when); never secret.
    #[serde(default)]
    pub name: Option<String>,
}

impl ApiKey {
    pub fn new(key: &str, role: Role) -> Self {
        ApiKey {
            key: key.into(),
            role,
            workers: Vec::new(),
            name: None,
        }
    }
}

/// One user who may log in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub username: String,
    /// An argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    pub password_hash: Secret,
    pub role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<User>,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a keys file (TOML, `[[keys]]` tables).
pub(crate) fn parse_keys(text: &str) -> Result<Vec<ApiKey>, String> {
    let f: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(f.keys)
}

/// Parses a users file (TOML, `[[users]]` tables).
pub(crate) fn parse_users(text: &str) -> Result<Vec<User>, String> {
    let f: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(f.users)
}

pub fn load_keys(path: &Path) -> Result<Vec<ApiKey>, String> {
    parse_keys(&read(path)?).map_err(|e| format!("keys file {}: {e}", path.display()))
}

pub fn load_users(path: &Path) -> Result<Vec<User>, String> {
    parse_users(&read(path)?).map_err(|e| format!("users file {}: {e}", path.display()))
}

/// Shortest accepted token secret: HS256 wants a key at least as long as
/// its 256-bit hash.
pub(crate) const MIN_JWT_SECRET: usize = 32;

/// Hashes a password for the users file: argon2id with the crate's
/// defaults (19 MiB, 2 passes, 1 lane: OWASP's minimum, tens of ms).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks `password` against a PHC string. CPU-heavy: call off the shard.
pub fn verify_password(phc: &str, password: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    match argon2::PasswordHash::new(phc) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else
/// matches itself. Linear in practice (one backtrack point, the last `*`).
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
