//! The module layers only point down.
//!
//! Reads every file under `src/`, finds each path into the crate it names
//! (`crate::x`, `crate::{x, y::z}`, or enough `super::` to climb out of its
//! own top-level module), and fails when a module names one that is not in
//! a lower layer. `main.rs` and `lib.rs` sit above everything and are not
//! checked. The layers are documented in `docs/architecture.md`; change
//! both together.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. A module may use only modules of a lower layer: not its
/// own layer's neighbours (so `tasks` and `proxy` stay independent, and
/// the pure `model` does not reach for the runtime).
const LAYERS: &[&[&str]] = &[
    &["runtime", "model"],
    &["metrics"],
    &["tasks", "proxy", "events", "history"],
    &["store"],
    &["cluster"],
    &["config"],
    &["shard"],
    &["http"],
    &["server", "probe"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `src` with comments and string literals blanked out, so that neither
/// prose nor a URL in a string counts as an import.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            // A char literal of a quote or backslash: not a string start.
            b'\'' if b.get(i + 2) == Some(&b'\'') => {
                out.push_str("' '");
                i += 3;
            }
            b'\'' if b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'') => {
                out.push_str("' '");
                i += 4;
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of every path in a `{...}` group (nested groups are
/// inside one item and do not matter: only the first segment does).
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => item_start = true,
            c if depth == 1 && item_start && !c.is_whitespace() => {
                item_start = false;
                heads.push(ident_at(&s[i..]).to_string());
            }
            _ => {}
        }
    }
    heads
}

/// The byte ranges of the inline modules (`mod tests { .. }`) in `code`.
fn inline_modules(code: &str) -> Vec<(usize, usize)> {
    let b = code.as_bytes();
    let mut ranges = Vec::new();
    for (at, _) in code.match_indices("mod ") {
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
            continue;
        }
        let rest = &code[at + 4..];
        let name = ident_at(rest.trim_start());
        let after = rest.trim_start()[name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        let mut end = code.len();
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        ranges.push((open, end));
    }
    ranges
}

/// Top-level crate modules named by `code` in a file whose module path is
/// `path` (e.g. `["http", "handlers", "tasks"]`; `mod.rs` files end at
/// their directory).
fn crate_modules(code: &str, path: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && (is_ident(code.as_bytes()[at - 1]) || code.as_bytes()[at - 1] == b':') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if rest.starts_with('{') {
            found.extend(group_heads(rest));
        } else {
            found.insert(ident_at(rest).to_string());
        }
    }
    // `super::super::...` climbing to the crate root: from a file at
    // `path`, plus one level per inline `mod x { .. }` around the match.
    let inline = inline_modules(code);
    for (at, _) in code.match_indices("super::") {
        if at > 0 && (is_ident(code.as_bytes()[at - 1]) || code.as_bytes()[at - 1] == b':') {
            continue;
        }
        let mut rest = &code[at..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        let depth = path.len() + inline.iter().filter(|(a, b)| *a < at && at < *b).count();
        if ups >= depth {
            if rest.starts_with('{') {
                found.extend(group_heads(rest));
            } else {
                found.insert(ident_at(rest).to_string());
            }
        }
    }
    found.retain(|m| !m.is_empty() && m != "self" && m != "super");
    found
}

/// Every `(file, module, named module)` where the named module is not in a
/// lower layer than the file's own.
fn violations(files: &[(String, Vec<String>, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (file, path, code) in files {
        let own = &path[0];
        let Some(own_layer) = layer_of(own) else {
            bad.push(format!(
                "{file}: module `{own}` is in no layer (add it to LAYERS)"
            ));
            continue;
        };
        for m in crate_modules(code, path) {
            if &m == own {
                continue;
            }
            match layer_of(&m) {
                Some(l) if l < own_layer => {}
                Some(_) => bad.push(format!("{file}: `{own}` uses `{m}`, which is not below it")),
                None => bad.push(format!("{file}: uses `crate::{m}`, which is in no layer")),
            }
        }
    }
    bad
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.len() > 1 && parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<_> = paths
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&src).unwrap();
            if rel == Path::new("main.rs") || rel == Path::new("lib.rs") {
                return None;
            }
            let text = std::fs::read_to_string(p).unwrap();
            Some((
                rel.display().to_string(),
                module_path(rel),
                code_only(&text),
            ))
        })
        .collect();
    assert!(
        files.len() > 40,
        "found only {} files under src/",
        files.len()
    );
    let bad = violations(&files);
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

fn one(file: &str, code: &str) -> Vec<String> {
    let path = module_path(Path::new(file));
    violations(&[(file.to_string(), path, code_only(code))])
}

#[test]
fn the_check_catches_every_spelling_of_an_upward_import() {
    assert_eq!(one("model/worker.rs", "use crate::http::Route;").len(), 1);
    assert_eq!(
        one("store/task.rs", "use crate::{model::x, shard::Shard};").len(),
        1
    );
    assert_eq!(
        one(
            "tasks/mod.rs",
            "fn f() { crate::shard::owner_of(\"a\", 2); }"
        )
        .len(),
        1
    );
    // Climbing out with `super` counts too; inside the module it does not.
    assert_eq!(
        one("http/handlers/x.rs", "use super::super::super::server::S;").len(),
        1
    );
    assert!(one("http/handlers/x.rs", "use super::super::error::ApiError;").is_empty());
    // An inline module is one level deeper.
    assert!(one(
        "proxy/pool.rs",
        "mod tests { use super::super::endpoint::E; }"
    )
    .is_empty());
    assert_eq!(
        one("proxy/pool.rs", "use super::super::endpoint::E;").len(),
        1
    );
    // Neighbours in one layer are independent.
    assert_eq!(one("proxy/pool.rs", "use crate::tasks::Task;").len(), 1);
    // Downward is fine; comments and strings are not code.
    assert!(one("shard/mod.rs", "use crate::{model::x, store::{self, Op}};").is_empty());
    assert!(one("model/a.rs", "// see crate::http\nlet s = \"crate::http\";").is_empty());
    assert!(one("model/a.rs", "let c = '\"'; let s = r#\"crate::shard\"#;").is_empty());
    // A module nobody placed is an error, not a pass.
    assert_eq!(one("newthing.rs", "").len(), 1);
}
