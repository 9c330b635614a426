//! Build-time facts for `coordinator_build_info`: the git commit the binary
//! was built from, as `COORDINATOR_GIT_COMMIT` (`env!` in `src/metrics.rs`).
//!
//! Must never fail the build: without git, without a `.git` (a Docker build
//! copies the sources without it, see `.dockerignore`) or with any git error
//! the commit is `unknown`. A build may name it through the environment
//! variable `COORDINATOR_GIT_COMMIT` instead (e.g. a Docker build argument).

use std::path::Path;
use std::process::Command;

fn main() {
    // Without any rerun-if line cargo would rerun this script on a change to
    // any file of the package; these are all it reads.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=COORDINATOR_GIT_COMMIT");
    let commit = std::env::var("COORDINATOR_GIT_COMMIT")
        .ok()
        .filter(|c| plausible(c))
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=COORDINATOR_GIT_COMMIT={commit}");
}

/// The short commit of this package's own repository, and the files whose
/// change means another commit. Only when the package root holds `.git`
/// (a directory, or a file in a worktree): a copy of these sources built
/// inside some other repository must not report that repository's commit.
fn git_commit() -> Option<String> {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&root);
    if !root.join(".git").exists() {
        return None;
    }
    // HEAD moves on checkout; the branch it names moves on commit. In a
    // worktree both live outside `root/.git`, so ask git where they are, and
    // name only files that exist (cargo reruns a script on every build
    // while a named file is missing).
    for name in ["HEAD", "packed-refs"] {
        watch(git(root, &["rev-parse", "--git-path", name]));
    }
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        watch(git(root, &["rev-parse", "--git-path", &branch]));
    }
    git(root, &["rev-parse", "--short", "HEAD"]).filter(|c| plausible(c))
}

fn watch(path: Option<String>) {
    if let Some(p) = path.filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

/// A git command's trimmed output, relative paths made absolute; `None` if
/// git is missing or fails.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if s.is_empty() {
        return None;
    }
    // `--git-path` answers relative to the working directory.
    if args.contains(&"--git-path") && Path::new(&s).is_relative() {
        return Some(root.join(s).to_string_lossy().into_owned());
    }
    Some(s)
}

/// A commit id as a label value: hex only, so nothing odd reaches the
/// metrics text.
fn plausible(c: &str) -> bool {
    (4..=40).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit())
}
