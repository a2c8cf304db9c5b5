//! The Ghost's TLS client (native-tls, OpenSSL on Linux): the fleet CA pinned (built-in roots
//! off) and, for mTLS, the Ghost's own certificate. Built once at startup, so a bad file is a
//! startup error, not a retry loop. A completed TLS handshake is only provisional: under TLS
//! 1.3 a refused client certificate shows up at the first read, so the session counts as up
//! only when the registration ack arrives.

use serde::{Deserialize, Serialize};

/// `[tls] mode` (part of the Ghost config, kept here beside the rules that read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    #[default]
    Development,
    Production,
}

/// `[tls]` of the Ghost config.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub mode: SecurityMode,
    pub enabled: bool,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub server_name: String,
}

pub type Connector = tokio_native_tls::TlsConnector;

/// The rules of edgectl-behaviour §2.1 for a client, in order, checked once.
pub fn validate(t: &TlsConfig) -> Result<(), String> {
    if t.mode == SecurityMode::Production {
        if !t.enabled {
            return Err("tls.mode = \"production\" requires tls.enabled = true".into());
        }
        if t.cert_file.is_empty() || t.key_file.is_empty() {
            return Err("tls.mode = \"production\" requires mTLS: set tls.cert_file and tls.key_file (see `mirage certs init`)".into());
        }
    }
    if t.enabled && t.ca_file.is_empty() {
        return Err(
            "tls.enabled needs tls.ca_file (the fleet CA that signed Mirage's certificate)".into(),
        );
    }
    if !t.enabled && (!t.cert_file.is_empty() || !t.key_file.is_empty()) {
        return Err("tls.cert_file/key_file are set but tls.enabled = false".into());
    }
    if t.cert_file.is_empty() != t.key_file.is_empty() {
        return Err("tls.cert_file and tls.key_file go together".into());
    }
    Ok(())
}

pub fn connector(t: &TlsConfig) -> Result<Option<Connector>, String> {
    validate(t)?;
    if !t.enabled {
        return Ok(None);
    }
    let read = |p: &str| std::fs::read(p).map_err(|e| format!("tls: cannot read {p}: {e}"));
    let ca = native_tls::Certificate::from_pem(&read(&t.ca_file)?)
        .map_err(|e| format!("tls.ca_file {}: {e}", t.ca_file))?;
    let mut b = native_tls::TlsConnector::builder();
    b.add_root_certificate(ca)
        .disable_built_in_roots(true)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if !t.cert_file.is_empty() {
        let id = native_tls::Identity::from_pkcs8(&read(&t.cert_file)?, &read(&t.key_file)?)
            .map_err(|e| {
                format!(
                    "tls: client identity {} / {} (the key must be PKCS#8): {e}",
                    t.cert_file, t.key_file
                )
            })?;
        b.identity(id);
    }
    let c = b.build().map_err(|e| format!("tls: {e}"))?;
    Ok(Some(tokio_native_tls::TlsConnector::from(c)))
}

/// What the Ghost's TLS files looked like when the connector was built: (path, length,
/// modification time) of the CA, certificate and key.
type Stamp = Vec<(String, u64, Option<std::time::SystemTime>)>;

fn stamp(t: &TlsConfig) -> Stamp {
    [&t.ca_file, &t.cert_file, &t.key_file]
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let m = std::fs::metadata(p).ok();
            (
                p.clone(),
                m.as_ref().map(|m| m.len()).unwrap_or(0),
                m.and_then(|m| m.modified().ok()),
            )
        })
        .collect()
}

/// Certificate rotation (`mirage certs rotate`): the files are looked at before each dial and
/// the connector rebuilt when they changed, so a new certificate is used from the next
/// session on and the current one is never interrupted. A new set that does not load (a
/// certificate copied before its key, say) keeps the previous connector and is tried again
/// at the next dial.
#[derive(Debug, Clone)]
pub struct Reloading {
    cfg: TlsConfig,
    stamp: Stamp,
}

impl Reloading {
    pub fn new(cfg: &TlsConfig) -> Reloading {
        Reloading {
            cfg: cfg.clone(),
            stamp: stamp(cfg),
        }
    }

    /// A fresh connector when the files changed since the last build and load; else None.
    pub fn refresh(&mut self) -> Option<Connector> {
        let now = stamp(&self.cfg);
        if now == self.stamp {
            return None;
        }
        match connector(&self.cfg) {
            Ok(c) => {
                self.stamp = now;
                tracing::info!(component = "ghost.tls", cert_file = %self.cfg.cert_file, "TLS files changed; the next session uses them");
                c
            }
            Err(e) => {
                tracing::warn!(component = "ghost.tls", error = %e, "TLS files changed but do not load; keeping the previous ones");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_needs_tls_and_a_client_identity() {
        let mut t = TlsConfig {
            mode: SecurityMode::Production,
            ..Default::default()
        };
        assert!(validate(&t).unwrap_err().contains("tls.enabled"));
        t.enabled = true;
        assert!(validate(&t).unwrap_err().contains("mTLS"));
        t.cert_file = "c".into();
        t.key_file = "k".into();
        assert!(validate(&t).unwrap_err().contains("ca_file"));
        t.ca_file = "ca".into();
        assert!(validate(&t).is_ok());
        assert!(
            validate(&TlsConfig::default()).is_ok(),
            "development plaintext"
        );
    }
}
