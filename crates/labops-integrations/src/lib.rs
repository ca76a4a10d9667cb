//! labops integrations: one module per external system.
//!
//! - [`proxmox`]: the Proxmox VE REST API (token or ticket auth, CA-file TLS), every request
//!   checked against the PVE schema.
//! - [`kubernetes`]: a watch-based cache of the cluster through kube-rs.
//! - [`static_hosts`]: machines declared in the config (NAS, router...).
//! - [`github`]: a repository's issues on GitHub (octocrab), for the change forge; every request
//!   checked against GitHub's published REST description.
//!
//! Each read-side module turns what it sees into an inventory [`labops_core::inventory::Part`].
//! Mutating operations come with the engine and are only reachable with proof of an approved
//! change.

use std::time::Duration;

pub mod github;
pub mod kubernetes;
pub mod proxmox;
pub mod static_hosts;

/// A secret value: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which server certificates a client trusts.
#[derive(Debug, Clone)]
pub enum TlsTrust {
    /// The system's root certificates.
    System,
    /// Only the CA certificates in this PEM data (a Proxmox cluster's own CA).
    Ca(Vec<u8>),
    /// Anything. Allowed only when the config says `insecure = true`, and warned about.
    Insecure,
}

/// Installs the ring crypto provider for rustls, once per process. Every TLS user in labops
/// (reqwest, kube, sqlx) goes through rustls with ring.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client with the given trust and timeout.
pub fn http_client(trust: &TlsTrust, timeout: Duration) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(8)
        .user_agent(concat!("labops/", env!("CARGO_PKG_VERSION")));
    match trust {
        TlsTrust::System => {}
        TlsTrust::Insecure => b = b.tls_danger_accept_invalid_certs(true),
        TlsTrust::Ca(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the CA file holds no usable PEM certificate: {e}"))?;
            if certs.is_empty() {
                return Err("the CA file holds no PEM certificate".into());
            }
            b = b.tls_certs_only(certs);
        }
    }
    b.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_bad_ca_file_is_refused_with_a_reason() {
        let err = http_client(&TlsTrust::Ca(b"not a certificate".to_vec()), Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("CA file"), "{err}");
    }
}
