//! `mirage certs init`: a fleet CA, a Mirage server certificate and one client certificate
//! per Ghost (its ghost_id as Subject CN, DNS SAN and a spiffe URI SAN), PEM files with PKCS#8
//! keys at mode 0600, and ready-to-use config snippets.
//!
//! The CA key is kept in `ca.key` (0600, a file of its own): it is the secret that mints
//! Ghost identities, so guard it or move it offline and bring it back only for
//! `mirage certs add-ghost`. `mirage certs revoke` adds a certificate's serial number to
//! `revoked.txt`, which Mirage checks at every handshake (`tls.revoked_file`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

fn e(what: &str, err: impl std::fmt::Display) -> String {
    format!("{what}: {err}")
}

pub fn new_ca(name: &str, days: i64) -> Result<Ca, String> {
    let key = KeyPair::generate().map_err(|x| e("CA key", x))?;
    let mut p = ca_params(name, days)?;
    serial(&mut p)?;
    let cert = p.self_signed(&key).map_err(|x| e("CA certificate", x))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issuer: Issuer::new(p, key),
    })
}

fn ca_params(name: &str, days: i64) -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|x| e("CA params", x))?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, -1, days);
    Ok(p)
}

/// A CA certificate signed by `parent` (CA:TRUE, clientAuth too), and usable as an issuer.
/// Mirage refuses both it and whatever it signs as Ghost certificates; tests use it to prove
/// that.
pub fn intermediate(parent: &Ca, cn: &str, days: i64) -> Result<Ca, String> {
    let key = KeyPair::generate().map_err(|x| e("CA key", x))?;
    let mut p = ca_params(cn, days)?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    serial(&mut p)?;
    let cert = p
        .signed_by(&key, &parent.issuer)
        .map_err(|x| e("intermediate certificate", x))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issuer: Issuer::new(p, key),
    })
}

/// The fleet CA back from `ca.pem` and `ca.key`, to issue more certificates.
pub fn load_ca(dir: &Path) -> Result<Ca, String> {
    let (cp, kp) = (dir.join("ca.pem"), dir.join("ca.key"));
    let cert_pem = std::fs::read_to_string(&cp).map_err(|x| e(&cp.display().to_string(), x))?;
    let key_pem = std::fs::read_to_string(&kp).map_err(|x| {
        e(
            &kp.display().to_string(),
            format!("{x} (the fleet CA key; a PKI made before `mirage certs` kept it has none, and one moved offline must be put back to issue certificates)"),
        )
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|x| e(&kp.display().to_string(), x))?;
    let ours = openssl::x509::X509::from_pem(cert_pem.as_bytes())
        .and_then(|c| c.public_key())
        .and_then(|k| k.public_key_to_der())
        .map_err(|x| e(&cp.display().to_string(), x))?;
    if ours != rcgen::PublicKeyData::subject_public_key_info(&key) {
        return Err(format!(
            "{} does not belong to {}",
            kp.display(),
            cp.display()
        ));
    }
    let issuer =
        Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|x| e(&cp.display().to_string(), x))?;
    Ok(Ca {
        cert_pem,
        key_pem,
        issuer,
    })
}

/// A random positive 128-bit serial, so each certificate can be revoked on its own.
fn serial(p: &mut CertificateParams) -> Result<(), String> {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).map_err(|x| e("serial", x))?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    p.serial_number = Some(SerialNumber::from_slice(&b));
    Ok(())
}

fn validity(p: &mut CertificateParams, from_days: i64, to_days: i64) {
    let now = time_now();
    p.not_before = now + rcgen_duration(from_days);
    p.not_after = now + rcgen_duration(to_days);
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_duration(days: i64) -> time::Duration {
    time::Duration::days(days)
}

/// A server certificate for Mirage: every host name as DNS SAN, IP literals as IP SANs.
pub fn server_cert(ca: &Ca, hosts: &[String], days: i64) -> Result<Leaf, String> {
    let key = KeyPair::generate().map_err(|x| e("server key", x))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|x| e("server params", x))?;
    p.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("mirage"),
    );
    for h in hosts {
        let san = match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.clone()
                    .try_into()
                    .map_err(|x| e(&format!("host {h}"), x))?,
            ),
        };
        p.subject_alt_names.push(san);
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut p, -1, days);
    serial(&mut p)?;
    let cert = p
        .signed_by(&key, &ca.issuer)
        .map_err(|x| e("server certificate", x))?;
    Ok(Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A Ghost's client certificate; `days` may be negative (an expired certificate, for tests).
pub fn client_cert(ca: &Ca, ghost_id: &str, from_days: i64, days: i64) -> Result<Leaf, String> {
    ghost_cert(ca, ghost_id, from_days, days, true)
}

/// A Ghost leaf without any extendedKeyUsage (as other tools issue them); Mirage accepts it
/// with a warning, see docs/DECISIONS.md.
pub fn client_cert_without_eku(ca: &Ca, ghost_id: &str, days: i64) -> Result<Leaf, String> {
    ghost_cert(ca, ghost_id, -1, days, false)
}

fn ghost_cert(
    ca: &Ca,
    ghost_id: &str,
    from_days: i64,
    days: i64,
    eku: bool,
) -> Result<Leaf, String> {
    shared::handshake::validate_ghost_id(ghost_id)
        .map_err(|x| e(&format!("ghost id {ghost_id:?}"), x))?;
    let key = KeyPair::generate().map_err(|x| e("client key", x))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|x| e("client params", x))?;
    p.distinguished_name.push(DnType::CommonName, ghost_id);
    p.subject_alt_names.push(SanType::DnsName(
        ghost_id
            .to_owned()
            .try_into()
            .map_err(|x| e(&format!("ghost id {ghost_id}"), x))?,
    ));
    p.subject_alt_names.push(SanType::URI(
        format!("spiffe://fleet/ghost/{ghost_id}")
            .try_into()
            .map_err(|x| e("spiffe uri", x))?,
    ));
    if eku {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p, from_days, days);
    serial(&mut p)?;
    let cert = p
        .signed_by(&key, &ca.issuer)
        .map_err(|x| e("client certificate", x))?;
    Ok(Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|x| e(&path.display().to_string(), x))?;
    f.write_all(text.as_bytes())
        .map_err(|x| e(&path.display().to_string(), x))?;
    // `mode` applies only on creation; make sure an existing file is tightened too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|x| e(&path.display().to_string(), x))
}

fn ghost_snippet(dir: &Path, g: &str, server_name: &str) -> String {
    format!(
        "\n# ghost.toml for {g}\nghost_id = \"{g}\"\n[tls]\nmode = \"production\"\nenabled = true\nca_file = \"{0}/ca.pem\"\ncert_file = \"{0}/{g}.pem\"\nkey_file = \"{0}/{g}.key\"\nserver_name = \"{server_name}\"\n",
        dir.display()
    )
}

fn abs(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Issues `<id>.pem` and `<id>.key` under `ca` into `out`, refusing to replace a certificate
/// that is still there (revoke it first: a replaced one would stay valid, unrevocable by id).
fn issue_ghost(ca: &Ca, out: &Path, g: &str, days: i64) -> Result<Vec<PathBuf>, String> {
    let cert = out.join(format!("{g}.pem"));
    if cert.exists() {
        return Err(format!(
            "{} exists: Ghost {g} already has a certificate; `mirage certs revoke {g}` first to replace it",
            cert.display()
        ));
    }
    let leaf = client_cert(ca, g, -1, days)?;
    let mut files = Vec::new();
    for (name, text, secret) in [
        (format!("{g}.pem"), &leaf.cert_pem, false),
        (format!("{g}.key"), &leaf.key_pem, true),
    ] {
        let p = out.join(name);
        write(&p, text, secret)?;
        files.push(p);
    }
    Ok(files)
}

/// Writes the whole fleet's PKI into `out` and returns the files written.
pub fn init(
    out: &Path,
    mirage_hosts: &[String],
    ghosts: &[String],
    days: i64,
) -> Result<Vec<PathBuf>, String> {
    if mirage_hosts.is_empty() {
        return Err("give at least one --mirage-host (the name Ghosts dial, e.g. 127.0.0.1 or mirage.example)".into());
    }
    if out.join("ca.pem").exists() {
        return Err(format!(
            "{} already holds a fleet CA; use `mirage certs add-ghost` to issue more, or another --out",
            out.display()
        ));
    }
    create_private_dir(out)?;
    let mut files = Vec::new();
    let ca = new_ca("Mirage fleet CA", days)?;
    for (name, text, secret) in [
        ("ca.pem", &ca.cert_pem, false),
        // The secret that mints Ghost identities: guard it, or move it offline.
        ("ca.key", &ca.key_pem, true),
    ] {
        let p = out.join(name);
        write(&p, text, secret)?;
        files.push(p);
    }
    let srv = server_cert(&ca, mirage_hosts, days)?;
    for (name, text, secret) in [
        ("mirage.pem", &srv.cert_pem, false),
        ("mirage.key", &srv.key_pem, true),
    ] {
        let p = out.join(name);
        write(&p, text, secret)?;
        files.push(p);
    }
    let p = out.join(REVOKED);
    write(&p, REVOKED_HEADER, false)?;
    files.push(p);
    let abs = abs(out);
    let mut snippet = format!(
        "# mirage.toml\n[tls]\nmode = \"production\"\nenabled = true\nca_file = \"{0}/ca.pem\"\ncert_file = \"{0}/mirage.pem\"\nkey_file = \"{0}/mirage.key\"\nrevoked_file = \"{0}/{REVOKED}\"\n",
        abs.display()
    );
    for g in ghosts {
        files.extend(issue_ghost(&ca, out, g, days)?);
        snippet.push_str(&ghost_snippet(&abs, g, &mirage_hosts[0]));
    }
    let p = out.join("config-snippets.toml");
    write(&p, &snippet, false)?;
    files.push(p);
    Ok(files)
}

/// The revocation list `mirage certs init` creates and `revoke` appends to.
pub const REVOKED: &str = "revoked.txt";
const REVOKED_HEADER: &str = "# Revoked Ghost certificates: serial (hex), ghost_id, revoked at (unix ms).\n# Mirage (tls.revoked_file) re-reads this file when it changes.\n";

fn create_private_dir(out: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if out.exists() {
        // The operator's own directory keeps its mode; every key in it is 0600.
        return Ok(());
    }
    // A new directory holds the CA key and Ghost keys: 0700.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(|x| e(&out.display().to_string(), x))
}

/// `mirage certs add-ghost`: a new Ghost certificate under the kept fleet CA. Returns the
/// files written and a ghost.toml snippet.
pub fn add_ghost(dir: &Path, ghost_id: &str, days: i64) -> Result<(Vec<PathBuf>, String), String> {
    let ca = load_ca(dir)?;
    let files = issue_ghost(&ca, dir, ghost_id, days)?;
    // The name Ghosts dial: the Mirage certificate's CN, as `init` wrote it.
    let server_name = std::fs::read(dir.join("mirage.pem"))
        .ok()
        .and_then(|p| openssl::x509::X509::from_pem(&p).ok())
        .and_then(|c| {
            c.subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .next()
                .and_then(|n| n.data().to_string().ok())
                .map(|s| s.to_string())
        })
        .unwrap_or_else(|| "MIRAGE-HOST".into());
    Ok((files, ghost_snippet(&abs(dir), ghost_id, &server_name)))
}

/// `mirage certs revoke`: lists the serial of `<id>.pem` (or `serial`) in `revoked.txt`,
/// written to a temp file and renamed so Mirage never reads half a list, and moves the
/// Ghost's files aside so `add-ghost` can issue a new certificate. Returns the serial.
pub fn revoke(dir: &Path, ghost_id: &str, serial: Option<&str>) -> Result<String, String> {
    let cert_path = dir.join(format!("{ghost_id}.pem"));
    let serial = match serial {
        Some(s) => {
            let n = crate::tls::normalize_serial(s);
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("--serial {s:?} is not a hex serial number"));
            }
            n
        }
        None => {
            let pem = std::fs::read(&cert_path).map_err(|x| {
                e(
                    &cert_path.display().to_string(),
                    format!(
                        "{x} (give --serial to revoke a certificate that is not in {})",
                        dir.display()
                    ),
                )
            })?;
            let cert = openssl::x509::X509::from_pem(&pem)
                .map_err(|x| e(&cert_path.display().to_string(), x))?;
            let id = crate::tls::identity(&cert)?;
            if id != ghost_id {
                return Err(format!(
                    "{} identifies {id:?}, not {ghost_id:?}",
                    cert_path.display()
                ));
            }
            crate::tls::serial_hex(&cert)
        }
    };
    let list = dir.join(REVOKED);
    let mut text = match std::fs::read_to_string(&list) {
        Ok(t) => t,
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => REVOKED_HEADER.to_owned(),
        Err(x) => return Err(e(&list.display().to_string(), x)),
    };
    let known = crate::tls::parse_revoked(&text).map_err(|x| e(&list.display().to_string(), x))?;
    if !known.contains(&serial) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{serial} {ghost_id} {}\n", shared::now_ms()));
        let tmp = dir.join(format!(".{REVOKED}.tmp"));
        write(&tmp, &text, false)?;
        std::fs::rename(&tmp, &list).map_err(|x| e(&list.display().to_string(), x))?;
    }
    // Keep the revoked files for the record, out of `add-ghost`'s way.
    if serial_of(&cert_path).as_deref() == Some(serial.as_str()) {
        for ext in ["pem", "key"] {
            let p = dir.join(format!("{ghost_id}.{ext}"));
            if p.exists() {
                let to = dir.join(format!("{ghost_id}.revoked-{serial}.{ext}"));
                std::fs::rename(&p, &to).map_err(|x| e(&p.display().to_string(), x))?;
            }
        }
    }
    Ok(serial)
}

/// What `rotate` did.
pub struct Rotated {
    pub files: Vec<PathBuf>,
    pub old_serial: String,
    pub new_serial: String,
    /// Where the previous certificate and key were kept.
    pub kept: Vec<PathBuf>,
}

/// `mirage certs rotate`: a new certificate and key for a Ghost under the kept fleet CA, in
/// place of `<id>.pem`/`<id>.key`. The previous pair is kept as `<id>.rotated-<serial>.*` and
/// stays valid (a Ghost still holding it can reconnect) until it is revoked: at once with
/// `revoke_old`, else later by `mirage certs revoke --serial`. A Ghost reads its files before
/// each dial, so its current session goes on and the next one uses the new certificate.
/// The key is renamed into place before the certificate, each from a complete temp file: a
/// Ghost reading in between sees a pair that does not match and keeps its previous one.
pub fn rotate(dir: &Path, ghost_id: &str, days: i64, revoke_old: bool) -> Result<Rotated, String> {
    let ca = load_ca(dir)?;
    let cert_path = dir.join(format!("{ghost_id}.pem"));
    let key_path = dir.join(format!("{ghost_id}.key"));
    let pem = std::fs::read(&cert_path).map_err(|x| {
        e(
            &cert_path.display().to_string(),
            format!("{x} (no certificate to rotate; `mirage certs add-ghost` issues a first one)"),
        )
    })?;
    let old =
        openssl::x509::X509::from_pem(&pem).map_err(|x| e(&cert_path.display().to_string(), x))?;
    let id = crate::tls::identity(&old)?;
    if id != ghost_id {
        return Err(format!(
            "{} identifies {id:?}, not {ghost_id:?}",
            cert_path.display()
        ));
    }
    let old_serial = crate::tls::serial_hex(&old);
    let leaf = client_cert(&ca, ghost_id, -1, days)?;
    let new_serial = openssl::x509::X509::from_pem(leaf.cert_pem.as_bytes())
        .map(|c| crate::tls::serial_hex(&c))
        .map_err(|x| e("new certificate", x))?;
    let mut kept = Vec::new();
    for (from, ext) in [(&cert_path, "pem"), (&key_path, "key")] {
        if from.exists() {
            let to = dir.join(format!("{ghost_id}.rotated-{old_serial}.{ext}"));
            std::fs::copy(from, &to).map_err(|x| e(&to.display().to_string(), x))?;
            if ext == "key" {
                write(
                    &to,
                    &std::fs::read_to_string(&to).map_err(|x| e("key copy", x))?,
                    true,
                )?;
            }
            kept.push(to);
        }
    }
    let mut files = Vec::new();
    for (path, text, secret) in [
        (&key_path, &leaf.key_pem, true),
        (&cert_path, &leaf.cert_pem, false),
    ] {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("ghost");
        let tmp = dir.join(format!(".{name}.tmp"));
        write(&tmp, text, secret)?;
        std::fs::rename(&tmp, path).map_err(|x| e(&path.display().to_string(), x))?;
        files.push(path.clone());
    }
    if revoke_old {
        revoke(dir, ghost_id, Some(&old_serial))?;
    }
    Ok(Rotated {
        files,
        old_serial,
        new_serial,
        kept,
    })
}

fn serial_of(p: &Path) -> Option<String> {
    let pem = std::fs::read(p).ok()?;
    let c = openssl::x509::X509::from_pem(&pem).ok()?;
    Some(crate::tls::serial_hex(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_fleet_with_private_keys_and_the_ghost_identity() {
        let dir = std::env::temp_dir().join(format!("mirage-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = init(
            &dir,
            &["127.0.0.1".into(), "mirage.local".into()],
            &["ghost.a".into()],
            30,
        )
        .unwrap();
        assert_eq!(files.len(), 8);
        let mode = std::fs::metadata(dir.join("ghost.a.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the CA key is kept, private");
        let key = std::fs::read_to_string(dir.join("ghost.a.key")).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
        let cert = openssl::x509::X509::from_pem(&std::fs::read(dir.join("ghost.a.pem")).unwrap())
            .unwrap();
        let cn = cert
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .unwrap();
        assert_eq!(cn.data().to_string().unwrap(), "ghost.a");
        let ca =
            openssl::x509::X509::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
        assert!(
            cert.verify(&ca.public_key().unwrap()).unwrap(),
            "signed by the fleet CA"
        );
        // The kept key issues more Ghosts under the same CA; revoking moves them aside.
        let (more, snippet) = add_ghost(&dir, "ghost.b", 30).unwrap();
        assert_eq!(more.len(), 2);
        assert!(snippet.contains("server_name = \"127.0.0.1\""), "{snippet}");
        let b = openssl::x509::X509::from_pem(&std::fs::read(dir.join("ghost.b.pem")).unwrap())
            .unwrap();
        assert!(b.verify(&ca.public_key().unwrap()).unwrap());
        assert!(add_ghost(&dir, "ghost.b", 30)
            .unwrap_err()
            .contains("revoke"));
        let serial = revoke(&dir, "ghost.b", None).unwrap();
        assert_eq!(serial, crate::tls::serial_hex(&b));
        let list = std::fs::read_to_string(dir.join(REVOKED)).unwrap();
        assert!(crate::tls::parse_revoked(&list).unwrap().contains(&serial));
        assert!(!dir.join("ghost.b.pem").exists());
        add_ghost(&dir, "ghost.b", 30).unwrap();
        assert!(init(&dir, &["x".into()], &[], 1)
            .unwrap_err()
            .contains("already"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
