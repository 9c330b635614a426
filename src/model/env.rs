//! Container env templates: the catalog's `env` values may name
//! `{worker_id}`, `{coordinator_url}` and `{port}`, filled in for each
//! worker when its `assigned_containers` are written (registration reply,
//! worker listings).
//!
//! Templates are expanded while serialising, never stored expanded: a
//! worker's record keeps no env map at all (one per container per worker
//! would cost hundreds of bytes per worker), the catalog keeps one template
//! map per service.
//!
//! Syntax: `{name}` is a placeholder, `{{` and `}}` are literal braces,
//! anything else is literal text. [`check`] refuses unknown names and stray
//! braces, so a typo in a catalog file stops the start instead of reaching
//! agents. Pure: no IO.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

/// The placeholders a template may name.
pub const PLACEHOLDERS: [&str; 3] = ["worker_id", "coordinator_url", "port"];

/// What the placeholders stand for, for one container of one worker.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub worker_id: &'a str,
    /// The URL agents are told to reach the coordinator at.
    pub coordinator_url: &'a str,
    /// The container's port.
    pub port: u16,
}

/// One piece of a template.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
    /// A brace that starts no placeholder and is not doubled.
    Stray(&'a str),
}

fn pieces(template: &str) -> impl Iterator<Item = Piece<'_>> {
    let mut rest = template;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let brace = rest.find(['{', '}']).unwrap_or(rest.len());
        if brace > 0 {
            let (text, tail) = rest.split_at(brace);
            rest = tail;
            return Some(Piece::Text(text));
        }
        if rest.starts_with("{{") || rest.starts_with("}}") {
            let (pair, tail) = rest.split_at(2);
            rest = tail;
            return Some(Piece::Text(&pair[..1]));
        }
        if let Some(end) = rest.strip_prefix('{').and_then(|r| r.find('}')) {
            let name = &rest[1..=end];
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                rest = &rest[end + 2..];
                return Some(Piece::Var(name));
            }
        }
        let (brace, tail) = rest.split_at(1);
        rest = tail;
        Some(Piece::Stray(brace))
    })
}

/// Refuses a template naming an unknown placeholder or holding a brace
/// that is neither a placeholder's nor doubled.
pub fn check(template: &str) -> Result<(), String> {
    for p in pieces(template) {
        match p {
            Piece::Text(_) => {}
            Piece::Var(name) if PLACEHOLDERS.contains(&name) => {}
            Piece::Var(name) => {
                return Err(format!(
                    "unknown placeholder {{{name}}} (known: {{worker_id}}, {{coordinator_url}}, {{port}}; write {{{{ for a literal brace)"
                ))
            }
            Piece::Stray(b) => {
                return Err(format!(
                    "stray {b:?} (write {b}{b} for a literal brace)"
                ))
            }
        }
    }
    Ok(())
}

/// `template` with its placeholders filled in from `vars`.
pub fn expand(template: &str, vars: &Vars<'_>) -> String {
    Expanded { template, vars }.to_string()
}

/// A template written with its placeholders filled in, without building
/// the string first. A placeholder [`check`] would refuse is written as is.
struct Expanded<'a> {
    template: &'a str,
    vars: &'a Vars<'a>,
}

impl fmt::Display for Expanded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in pieces(self.template) {
            match p {
                Piece::Text(t) | Piece::Stray(t) => f.write_str(t)?,
                Piece::Var("worker_id") => f.write_str(self.vars.worker_id)?,
                Piece::Var("coordinator_url") => f.write_str(self.vars.coordinator_url)?,
                Piece::Var("port") => write!(f, "{}", self.vars.port)?,
                Piece::Var(other) => write!(f, "{{{other}}}")?,
            }
        }
        Ok(())
    }
}

impl Serialize for Expanded<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Almost every value is plain text or one whole placeholder: those
        // are written directly, without the formatting machinery (it made
        // a 1,000-worker listing cost a quarter more instructions).
        match self.template {
            "{worker_id}" => s.serialize_str(self.vars.worker_id),
            "{coordinator_url}" => s.serialize_str(self.vars.coordinator_url),
            t if !t.contains(['{', '}']) => s.serialize_str(t),
            _ => s.collect_str(self),
        }
    }
}

/// An env map of templates, serialised as the JSON object of its expanded
/// values.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub templates: &'a BTreeMap<String, String>,
    pub vars: Vars<'a>,
}

impl Serialize for Env<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.templates.iter().map(|(k, t)| {
            (
                k,
                Expanded {
                    template: t,
                    vars: &self.vars,
                },
            )
        }))
    }
}

/// The JSON of one `assigned_containers` entry: `{name, image, port, env}`
/// with the env expanded. The registration reply and the worker listings
/// both write this, so the two cannot drift apart.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Container)]
pub struct ContainerJson<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub port: u16,
    /// Environment of the container, templates filled in.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub env: Env<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: Vars<'static> = Vars {
        worker_id: "gpu-7",
        coordinator_url: "https://coord.example",
        port: 8104,
    };

    #[test]
    fn placeholders_are_filled_in() {
        assert_eq!(expand("{worker_id}", &VARS), "gpu-7");
        assert_eq!(expand("{coordinator_url}", &VARS), "https://coord.example");
        assert_eq!(expand("0.0.0.0:{port}", &VARS), "0.0.0.0:8104");
        assert_eq!(
            expand("{coordinator_url}/api/worker/{worker_id}?p={port}", &VARS),
            "https://coord.example/api/worker/gpu-7?p=8104"
        );
        assert_eq!(expand("plain", &VARS), "plain");
        assert_eq!(expand("", &VARS), "");
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            expand("{{\"id\": \"{worker_id}\"}}", &VARS),
            "{\"id\": \"gpu-7\"}"
        );
        assert_eq!(expand("{{worker_id}}", &VARS), "{worker_id}");
        assert!(check("{{worker_id}}").is_ok());
    }

    #[test]
    fn check_refuses_unknown_names_and_stray_braces() {
        for ok in ["", "x", "{worker_id}", "a{port}b{coordinator_url}", "{{}}"] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        let e = check("{workerid}").unwrap_err();
        assert!(e.contains("{workerid}"), "{e}");
        for bad in ["{", "}", "a{b", "{worker_id", "x}y", "{ }", "{}"] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_check_refuses_is_written_as_is() {
        // Never reached after `check`, but expansion stays total.
        assert_eq!(expand("{nope} { }", &VARS), "{nope} { }");
        assert_eq!(expand("a}b{", &VARS), "a}b{");
    }

    #[test]
    fn env_serialises_as_an_object_of_expanded_values() {
        let t: BTreeMap<String, String> = [
            ("WORKER_ID".to_string(), "{worker_id}".to_string()),
            ("QUOTE".to_string(), "say \"{port}\"\n".to_string()),
            ("URL".to_string(), "{coordinator_url}".to_string()),
            ("PLAIN".to_string(), "a \"b\"".to_string()),
            ("BRACES".to_string(), "{{}}".to_string()),
        ]
        .into();
        let json = serde_json::to_value(Env {
            templates: &t,
            vars: VARS,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"WORKER_ID": "gpu-7", "QUOTE": "say \"8104\"\n",
                               "URL": "https://coord.example", "PLAIN": "a \"b\"", "BRACES": "{}"})
        );
        // Escaping holds for values coming from the worker id, too.
        let odd = Vars {
            worker_id: "a\"b\\c",
            ..VARS
        };
        let s = serde_json::to_string(&Env {
            templates: &t,
            vars: odd,
        })
        .unwrap();
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["WORKER_ID"], "a\"b\\c");
    }
}
