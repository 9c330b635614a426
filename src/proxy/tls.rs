//! The proxy's TLS client settings for `https://` worker endpoints: which
//! certificate authorities are trusted (the Mozilla roots bundled by
//! webpki-roots, plus the PEM file given as `--proxy-ca-file`), ring as the
//! crypto provider, HTTP/1.1 offered over ALPN.
//!
//! Built once at server start; each shard takes its own copy (with its own
//! session cache, see `proxy::pool::Pool::new`), so handshakes share no
//! lock or refcount between shards. A bad CA file stops the start instead
//! of failing requests later. This file must not open connections:
//! the handshake itself runs in `runtime::HyperIo::start_tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--proxy-ca-file {path}: {msg}")]
    CaFile { path: PathBuf, msg: String },
    #[error("proxy TLS settings: {0}")]
    Config(#[from] rustls::Error),
}

/// The client configuration for all upstream TLS connections.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        add_pem_file(&mut roots, path)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The client speaks HTTP/1.1 only; saying so keeps an ALPN-aware
    // server (Cloudflare's edge) from expecting h2.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Adds every certificate in a PEM file to `roots`. A file with none, or
/// one rustls rejects, is an error (a silently ignored CA file would only
/// show up later as certificate failures on every request).
fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsSetupError> {
    let err = |msg: String| TlsSetupError::CaFile {
        path: path.to_path_buf(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| err(format!("not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("unusable certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(err("no CERTIFICATE block in the file".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("coordinator-tls-{}-{name}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn default_roots_only() {
        let cfg = client_config(None).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_generated_ca_is_added() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let p = temp("ok.pem", ca.pem().as_bytes());
        let r = client_config(Some(&p));
        std::fs::remove_file(&p).unwrap();
        r.unwrap();
    }

    #[test]
    fn missing_empty_or_broken_ca_files_are_refused() {
        let missing = std::env::temp_dir().join("coordinator-tls-does-not-exist.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(
            e.contains("--proxy-ca-file") && e.contains("does-not-exist"),
            "{e}"
        );
        let p = temp("empty.pem", b"just text\n");
        let e = client_config(Some(&p)).unwrap_err().to_string();
        std::fs::remove_file(&p).unwrap();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let p = temp(
            "junk.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = client_config(Some(&p)).unwrap_err().to_string();
        std::fs::remove_file(&p).unwrap();
        assert!(e.contains("--proxy-ca-file"), "{e}");
    }
}
