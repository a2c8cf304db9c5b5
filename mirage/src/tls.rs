//! Mirage's TLS listener side: OpenSSL through tokio-openssl, because native-tls's acceptor
//! cannot request or verify client certificates (rust-native-tls #161, #262). Production mode
//! requires TLS and a verified client certificate whose identity — Subject CN, else first URI
//! SAN, else first DNS SAN — must equal the registering ghost_id.
//!
//! A client certificate must also be a Ghost *leaf* signed directly by the fleet CA
//! (issue 19 item 1): not a CA itself, clientAuth in its extendedKeyUsage when it has one,
//! no intermediate between it and the fleet CA, and its serial not on the revocation list.
//! Otherwise anyone holding a CA:TRUE certificate from the fleet CA could mint every Ghost
//! identity. OpenSSL checks none of that for a client leaf, so a verify callback does.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openssl::nid::Nid;
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::{X509Ref, X509StoreContextRef, X509VerifyResult, X509};
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
    /// Revoked Ghost certificates (`mirage certs revoke` writes it): one serial number in hex
    /// a line. Read at startup and again whenever the file changes; empty = none revoked.
    pub revoked_file: String,
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
    if !t.revoked_file.is_empty() && t.ca_file.is_empty() {
        return Err(
            "tls.revoked_file needs tls.ca_file (revocation applies to client certificates)".into(),
        );
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
        let revoked = if t.revoked_file.is_empty() {
            None
        } else {
            let r = revoked_list(Path::new(&t.revoked_file));
            // A list that cannot be read now is a startup error, not a silent "none revoked".
            r.check("")?;
            Some(r)
        };
        // Leaf at depth 0, the fleet CA at depth 1: no room for an intermediate. The callback
        // enforces the same and says why.
        b.set_verify_depth(1);
        b.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |ok, ctx| verify_client(ok, ctx, revoked.as_deref()),
        );
    }
    Ok(Some(b.build()))
}

/// OpenSSL's verdict on each certificate of the chain (root first), plus ours. Every refusal
/// is logged with the Ghost identity the leaf claims, so an operator sees which one and why.
fn verify_client(
    preverified: bool,
    ctx: &mut X509StoreContextRef,
    revoked: Option<&Revoked>,
) -> bool {
    let depth = ctx.error_depth();
    let ghost = ctx
        .chain()
        .and_then(|c| c.get(0))
        .map(subject)
        .unwrap_or_else(|| "(none)".into());
    let verdict = if !preverified {
        Err(ctx.error().error_string().to_owned())
    } else {
        match (depth, ctx.current_cert()) {
            (_, None) => Err("no certificate".into()),
            (0, Some(cert)) => check_leaf(cert).and_then(|kind| {
                if kind == LeafKind::NoEku {
                    tracing::warn!(component = "mirage.tls", ghost = %ghost, "client certificate has no extendedKeyUsage; accepted as a leaf (CA:FALSE), see docs/DECISIONS.md");
                }
                match revoked {
                    Some(r) => r.check(&serial_hex(cert)),
                    None => Ok(()),
                }
            }),
            // The trust anchor itself: only fleet CA certificates are in the store.
            (1, Some(_)) => Ok(()),
            (d, Some(_)) => Err(format!(
                "certificate chain is {} deep: a Ghost certificate must be signed directly by the fleet CA, not through an intermediate",
                d + 1
            )),
        }
    };
    match verdict {
        Ok(()) => true,
        Err(reason) => {
            tracing::warn!(component = "mirage.tls", code = shared::error::code::TRANSPORT, depth, ghost = %ghost, reason = %reason, "client certificate refused");
            if preverified {
                ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
            }
            false
        }
    }
}

fn subject(cert: &X509Ref) -> String {
    identity(cert).unwrap_or_else(|_| "(no identity)".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// clientAuth in its extendedKeyUsage.
    ClientAuth,
    /// No extendedKeyUsage extension at all (RFC 5280: unrestricted).
    NoEku,
}

/// A Ghost's certificate must be a leaf usable for client authentication.
pub fn check_leaf(cert: &X509Ref) -> Result<LeafKind, String> {
    let der = cert
        .to_der()
        .map_err(|e| format!("client certificate: {e}"))?;
    let (_, c) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    match c.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            return Err("client certificate is a CA (basicConstraints CA:TRUE); a Ghost needs a leaf certificate (`mirage certs add-ghost`)".into())
        }
        Ok(_) => {}
        Err(e) => return Err(format!("client certificate basicConstraints: {e}")),
    }
    match c.extended_key_usage() {
        Ok(Some(eku)) if eku.value.client_auth => Ok(LeafKind::ClientAuth),
        Ok(Some(_)) => Err("client certificate's extendedKeyUsage does not include clientAuth (a server certificate cannot identify a Ghost)".into()),
        Ok(None) => Ok(LeafKind::NoEku),
        Err(e) => Err(format!("client certificate extendedKeyUsage: {e}")),
    }
}

/// A certificate serial number as `mirage certs revoke` writes it: upper-case hex, no
/// leading zeros.
pub fn serial_hex(cert: &X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
        .map(|s| normalize_serial(&s))
        .unwrap_or_default()
}

pub fn normalize_serial(s: &str) -> String {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let t = hex.trim_start_matches('0');
    if t.is_empty() && !hex.is_empty() {
        "0".into()
    } else {
        t.to_owned()
    }
}

/// Parses a revocation file: the first word of each line is a serial number in hex; `#`
/// starts a comment. Returns the serials, or the first line that is not one.
pub fn parse_revoked(text: &str) -> Result<HashSet<String>, String> {
    let mut out = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(serial) = line.split_whitespace().next() else {
            continue;
        };
        if !serial.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!(
                "line {}: {serial:?} is not a hex serial number",
                n + 1
            ));
        }
        out.insert(normalize_serial(serial));
    }
    Ok(out)
}

/// The revocation list, re-read when the file changes (checked at every handshake: one
/// stat). A file that cannot be read refuses every client: fail closed.
pub struct Revoked {
    path: PathBuf,
    state: Mutex<RevokedState>,
}

#[derive(Default)]
struct RevokedState {
    stamp: Option<(std::time::SystemTime, u64, u64)>,
    serials: HashSet<String>,
}

impl Revoked {
    pub fn new(path: PathBuf) -> Revoked {
        Revoked {
            path,
            state: Mutex::new(RevokedState::default()),
        }
    }

    /// Ok unless `serial` is revoked or the list is unreadable.
    pub fn check(&self, serial: &str) -> Result<(), String> {
        if self.listed(serial)? {
            return Err(format!(
                "client certificate serial {serial} is revoked (listed in {})",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// Whether `serial` is on the list (re-read when the file changed); Err if unreadable.
    pub fn listed(&self, serial: &str) -> Result<bool, String> {
        use std::os::unix::fs::MetadataExt;
        let file = self.path.display();
        let meta = std::fs::metadata(&self.path).map_err(|e| {
            format!(
                "tls.revoked_file {file}: {e}; refusing client certificates until it can be read"
            )
        })?;
        let stamp = (
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            meta.len(),
            meta.ino(),
        );
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.stamp != Some(stamp) {
            let text = std::fs::read_to_string(&self.path)
                .map_err(|e| format!("tls.revoked_file {file}: {e}; refusing client certificates until it can be read"))?;
            let serials = parse_revoked(&text).map_err(|e| {
                format!(
                    "tls.revoked_file {file}: {e}; refusing client certificates until it is fixed"
                )
            })?;
            tracing::info!(component = "mirage.tls", file = %file, revoked = serials.len(), "revocation list loaded");
            st.serials = serials;
            st.stamp = Some(stamp);
        }
        Ok(!serial.is_empty() && st.serials.contains(serial))
    }
}

/// One parsed list per file in the process: the handshake's check and every open session's
/// re-check share it (a change is read once, not once per session).
pub fn revoked_list(path: &Path) -> Arc<Revoked> {
    static LISTS: std::sync::OnceLock<Mutex<HashMap<PathBuf, Arc<Revoked>>>> =
        std::sync::OnceLock::new();
    let mut lists = LISTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    lists
        .entry(path.to_path_buf())
        .or_insert_with(|| Arc::new(Revoked::new(path.to_path_buf())))
        .clone()
}

/// The identity a verified client certificate carries, or why it carries none usable.
pub fn identity(cert: &X509Ref) -> Result<String, String> {
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

    fn x509(pem: &str) -> X509 {
        X509::from_pem(pem.as_bytes()).unwrap()
    }

    #[test]
    fn only_client_leaves_pass_the_leaf_check() {
        let ca = crate::certs::new_ca("t", 1).unwrap();
        let good = crate::certs::client_cert(&ca, "ghost.a", -1, 1).unwrap();
        assert_eq!(check_leaf(&x509(&good.cert_pem)), Ok(LeafKind::ClientAuth));
        let no_eku = crate::certs::client_cert_without_eku(&ca, "ghost.a", 1).unwrap();
        assert_eq!(check_leaf(&x509(&no_eku.cert_pem)), Ok(LeafKind::NoEku));
        let sub = crate::certs::intermediate(&ca, "ghost.a", 1).unwrap();
        assert!(check_leaf(&x509(&sub.cert_pem))
            .unwrap_err()
            .contains("CA:TRUE"));
        assert!(check_leaf(&x509(&ca.cert_pem))
            .unwrap_err()
            .contains("CA:TRUE"));
        let srv = crate::certs::server_cert(&ca, &["ghost.a".into()], 1).unwrap();
        assert!(check_leaf(&x509(&srv.cert_pem))
            .unwrap_err()
            .contains("clientAuth"));
    }

    #[test]
    fn revocation_list_parses_serials_and_refuses_junk() {
        let s = parse_revoked("# c\n\n00ab:CD ghost.a 1\n  0f # x\n").unwrap();
        assert!(s.contains("ABCD") && s.contains("F"), "{s:?}");
        assert_eq!(normalize_serial("000"), "0");
        assert!(parse_revoked("ab\nzz ghost\n")
            .unwrap_err()
            .contains("line 2"));
    }

    #[test]
    fn revoked_file_is_reread_when_it_changes_and_fails_closed() {
        let dir = std::env::temp_dir().join(format!("mirage-revoked-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let f = dir.join("r.txt");
        std::fs::write(&f, "").unwrap();
        let r = Revoked::new(f.clone());
        assert!(r.check("AB").is_ok());
        // A new file (as `certs revoke` renames one in) is seen at the next check.
        std::fs::write(dir.join("n.txt"), "AB g 1\n").unwrap();
        std::fs::rename(dir.join("n.txt"), &f).unwrap();
        assert!(r.check("AB").unwrap_err().contains("revoked"));
        assert!(r.check("CD").is_ok());
        std::fs::remove_file(&f).unwrap();
        assert!(r.check("CD").unwrap_err().contains("refusing"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
