//! `mirage certs init`: a fleet CA, a Mirage server certificate and one client certificate
//! per Ghost (its ghost_id as Subject CN, DNS SAN and a spiffe URI SAN), PEM files with PKCS#8
//! keys at mode 0600, and ready-to-use config snippets.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct Ca {
    pub cert_pem: String,
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
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|x| e("CA params", x))?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, -1, days);
    let cert = p.self_signed(&key).map_err(|x| e("CA certificate", x))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        issuer: Issuer::new(p, key),
    })
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
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p, from_days, days);
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
    std::fs::create_dir_all(out).map_err(|x| e(&out.display().to_string(), x))?;
    let mut files = Vec::new();
    let ca = new_ca("Mirage fleet CA", days)?;
    let p = out.join("ca.pem");
    write(&p, &ca.cert_pem, false)?;
    files.push(p);
    let srv = server_cert(&ca, mirage_hosts, days)?;
    for (name, text, secret) in [
        ("mirage.pem", &srv.cert_pem, false),
        ("mirage.key", &srv.key_pem, true),
    ] {
        let p = out.join(name);
        write(&p, text, secret)?;
        files.push(p);
    }
    let abs = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
    let mut snippet = format!(
        "# mirage.toml\n[tls]\nmode = \"production\"\nenabled = true\nca_file = \"{0}/ca.pem\"\ncert_file = \"{0}/mirage.pem\"\nkey_file = \"{0}/mirage.key\"\n",
        abs.display()
    );
    for g in ghosts {
        let leaf = client_cert(&ca, g, -1, days)?;
        for (name, text, secret) in [
            (format!("{g}.pem"), &leaf.cert_pem, false),
            (format!("{g}.key"), &leaf.key_pem, true),
        ] {
            let p = out.join(name);
            write(&p, text, secret)?;
            files.push(p);
        }
        snippet.push_str(&format!(
            "\n# ghost.toml for {g}\nghost_id = \"{g}\"\n[tls]\nmode = \"production\"\nenabled = true\nca_file = \"{0}/ca.pem\"\ncert_file = \"{0}/{g}.pem\"\nkey_file = \"{0}/{g}.key\"\nserver_name = \"{1}\"\n",
            abs.display(),
            mirage_hosts[0]
        ));
    }
    let p = out.join("config-snippets.toml");
    write(&p, &snippet, false)?;
    files.push(p);
    Ok(files)
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
        assert_eq!(files.len(), 6);
        let mode = std::fs::metadata(dir.join("ghost.a.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
