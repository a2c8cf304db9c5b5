//! Mirage's TLS listener side: OpenSSL through tokio-openssl, because native-tls's acceptor
//! cannot request or verify client certificates (rust-native-tls #161, #262). Production mode
//! requires TLS and a verified client certificate whose identity — Subject CN, else first URI
//! SAN, else first DNS SAN — must equal the registering ghost_id.

use openssl::nid::Nid;
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    #[default]
    Development,
    Production,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub mode: SecurityMode,
    pub enabled: bool,
    /// Mirage's certificate chain and PKCS#8 key.
    pub cert_file: String,
    pub key_file: String,
    /// The fleet CA that signs Ghost certificates; set = client certificates required.
    pub ca_file: String,
}

/// Rules in edgectl's order, checked once at startup.
pub fn validate(t: &TlsConfig) -> Result<(), String> {
    if t.mode == SecurityMode::Production {
        if !t.enabled {
            return Err("tls.mode = \"production\" requires tls.enabled = true (plaintext sessions are for development only)".into());
        }
        if t.ca_file.is_empty() {
            return Err("tls.mode = \"production\" requires mTLS: set tls.ca_file to the fleet CA (see `mirage certs init`)".into());
        }
    }
    if t.enabled && (t.cert_file.is_empty() || t.key_file.is_empty()) {
        return Err("tls.enabled needs tls.cert_file and tls.key_file".into());
    }
    if !t.enabled && !t.ca_file.is_empty() {
        return Err("tls.ca_file is set but tls.enabled = false".into());
    }
    Ok(())
}

pub fn acceptor(t: &TlsConfig) -> Result<Option<SslAcceptor>, String> {
    validate(t)?;
    if !t.enabled {
        return Ok(None);
    }
    let e = |what: &str, err: openssl::error::ErrorStack| format!("tls: {what}: {err}");
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|x| e("acceptor", x))?;
    b.set_private_key_file(&t.key_file, openssl::ssl::SslFiletype::PEM)
        .map_err(|x| e(&format!("key_file {}", t.key_file), x))?;
    b.set_certificate_chain_file(&t.cert_file)
        .map_err(|x| e(&format!("cert_file {}", t.cert_file), x))?;
    b.check_private_key()
        .map_err(|x| e("key does not match the certificate", x))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|x| e("protocol", x))?;
    if !t.ca_file.is_empty() {
        let pem =
            std::fs::read(&t.ca_file).map_err(|x| format!("tls: ca_file {}: {x}", t.ca_file))?;
        for ca in X509::stack_from_pem(&pem).map_err(|x| e(&format!("ca_file {}", t.ca_file), x))? {
            b.cert_store_mut()
                .add_cert(ca.clone())
                .map_err(|x| e("ca", x))?;
            b.add_client_ca(&ca).map_err(|x| e("ca", x))?;
        }
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(Some(b.build()))
}

/// The identity a verified client certificate carries, or why it carries none usable.
pub fn identity(cert: &X509) -> Result<String, String> {
    let clean = |s: String| -> Result<String, String> {
        if s.contains('\0') || s.contains('\u{FFFD}') {
            Err("certificate identity contains NUL or invalid characters".into())
        } else {
            Ok(s)
        }
    };
    if let Some(cn) = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next() {
        if let Ok(s) = cn.data().to_string() {
            if !s.trim().is_empty() {
                return clean(s);
            }
        }
    }
    if let Some(sans) = cert.subject_alt_names() {
        if let Some(u) = sans.iter().find_map(|g| g.uri().map(str::to_owned)) {
            return clean(u);
        }
        if let Some(d) = sans.iter().find_map(|g| g.dnsname().map(str::to_owned)) {
            return clean(d);
        }
    }
    Err("client certificate has no CN, URI SAN or DNS SAN".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_anything_less_than_mtls() {
        let mut t = TlsConfig {
            mode: SecurityMode::Production,
            ..Default::default()
        };
        assert!(validate(&t).unwrap_err().contains("tls.enabled"));
        t.enabled = true;
        assert!(validate(&t).unwrap_err().contains("mTLS"));
        t.ca_file = "ca".into();
        assert!(validate(&t).unwrap_err().contains("cert_file"));
        t.cert_file = "c".into();
        t.key_file = "k".into();
        assert!(validate(&t).is_ok());
        assert!(validate(&TlsConfig::default()).is_ok());
    }

    #[test]
    fn identity_prefers_cn() {
        let ca = crate::certs::new_ca("t", 1).unwrap();
        let leaf = crate::certs::client_cert(&ca, "ghost.z", -1, 1).unwrap();
        let cert = X509::from_pem(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(identity(&cert).unwrap(), "ghost.z");
    }
}
