//! The outbound TLS settings of the whole process, taken from Pingora's `server:` section.
//!
//! Pingora's proxy builds its upstream connector from `ServerConf` itself, so `server.ca_file`
//! already reaches proxied requests. Every other connector is built from the `ConnectorOptions`
//! it is handed, and with none it trusts only the platform's roots: aigate's own HTTP client (GCP
//! token calls, passthrough's first hop) and the active health probes take theirs from here, so
//! one setting governs every outbound TLS connection.
//!
//! With `ca_file` set, Pingora puts only that file in the root store: the platform's roots are
//! replaced, not extended.

use std::sync::OnceLock;

use pingora_core::connectors::ConnectorOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::tls::{load_ca_file_into_store, RootCertStore};

static OPTIONS: OnceLock<ConnectorOptions> = OnceLock::new();

/// Record the process's outbound options. Called once, while the config is prepared: probes are
/// built with their connectors as the config is compiled, before any service starts (and before
/// `-d` forks, which keeps memory). Later calls keep the first options, as Pingora's own
/// connector does: the server section is not reloadable.
pub fn init(conf: &ServerConf) {
    let mut options = ConnectorOptions::from_server_conf(conf);
    // Each connector would start its own pool of connect threads; the proxy's connector keeps
    // Pingora's setting, and the gateway's own calls and probes are too few to need one.
    options.offload_threadpool = None;
    let _ = OPTIONS.set(options);
}

/// Options for a connector the gateway builds itself. `None` before `init` (unit tests): Pingora's
/// defaults, the platform's roots.
pub fn connector_options() -> Option<ConnectorOptions> {
    OPTIONS.get().cloned()
}

/// Check a CA file the way Pingora will load it, so a bad file is a config error rather than a
/// panic when the first connector is built (or a connector that trusts nothing). Returns the
/// number of certificates.
pub fn check_ca_file(path: &str) -> Result<usize, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let mut store = RootCertStore::empty();
    load_ca_file_into_store(path, &mut store).map_err(|e| {
        let reason = e
            .context
            .as_ref()
            .map_or(e.etype().as_str(), |c| c.as_str());
        let cause = e
            .cause
            .as_ref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        format!("{path:?} must hold only PEM \"CERTIFICATE\" blocks: {reason}{cause}")
    })?;
    if store.is_empty() {
        return Err(format!(
            "{path:?} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\" blocks)"
        ));
    }
    Ok(store.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    /// Writes `text` to a fresh file and checks it.
    fn check(text: &str) -> Result<usize, String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("aigate-ca-{}-{n}.pem", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let r = check_ca_file(path.to_str().unwrap());
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn a_bundle_counts_its_certificates() {
        let bundle = format!(
            "# comments and text between blocks are fine\n{}\n{}",
            ca_pem("a"),
            ca_pem("b")
        );
        assert_eq!(check(&bundle), Ok(2));
    }

    #[test]
    fn files_pingora_would_refuse_or_trust_nothing_from_are_errors() {
        let key = include_str!("../../tests/fixtures/gcp-test-key.pkcs8.pem");
        let e = check("").unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = check("hello\n").unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        // Pingora refuses the whole file when anything but certificates is in it.
        let e = check(&format!("{}{key}", ca_pem("a"))).unwrap_err();
        assert!(e.contains("un-loadable certificate type"), "{e}");
        let e =
            check("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap_err();
        assert!(
            e.contains("must hold only PEM \"CERTIFICATE\" blocks"),
            "{e}"
        );
        // Valid base64 that is no certificate.
        let e = check("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(
            e.contains("must hold only PEM \"CERTIFICATE\" blocks"),
            "{e}"
        );
        let e = check_ca_file("/nonexistent/aigate-ca.pem").unwrap_err();
        assert!(
            e.starts_with("cannot read \"/nonexistent/aigate-ca.pem\""),
            "{e}"
        );
    }
}
