//! `mirage doctor` / `ghost doctor`: the checks an operator runs before (or instead of)
//! reading logs: certificates (expiry, chain to the CA, key modes, key matches), listen
//! ports, the data directory, clock skew. Each problem carries its fix. The decisions
//! (thresholds, what counts as a problem) are plain functions, unit-tested without files.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContext, X509};

/// A certificate expiring within this many days is a problem: time to rotate.
pub const EXPIRY_WARN_DAYS: i32 = 30;
/// Clock skew beyond this is a problem (the same line as Mirage's own skew warning).
pub const SKEW_WARN_MS: i64 = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub area: &'static str,
    pub what: String,
    /// None: the check passed.
    pub fix: Option<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&mut self, area: &'static str, what: impl Into<String>) {
        self.findings.push(Finding {
            area,
            what: what.into(),
            fix: None,
        });
    }

    pub fn problem(&mut self, area: &'static str, what: impl Into<String>, fix: impl Into<String>) {
        self.findings.push(Finding {
            area,
            what: what.into(),
            fix: Some(fix.into()),
        });
    }

    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| f.fix.is_some()).count()
    }

    /// Prints every finding (`ok` / `PROBLEM` and its `fix:`) and a summary line; the exit
    /// code is 1 when anything is wrong.
    pub fn print(&self, out: &mut impl Write) -> i32 {
        for f in &self.findings {
            let _ = match &f.fix {
                None => writeln!(out, "ok       {:<8} {}", f.area, f.what),
                Some(fix) => writeln!(
                    out,
                    "PROBLEM  {:<8} {}\n         fix: {fix}",
                    f.area, f.what
                ),
            };
        }
        let n = self.problems();
        let _ = if n == 0 {
            writeln!(out, "no problems found ({} checks)", self.findings.len())
        } else {
            writeln!(out, "{n} problem(s) found ({} checks)", self.findings.len())
        };
        i32::from(n > 0)
    }
}

/// What an expiry in `days_left` days means: Err(problem) when expired or close.
pub fn expiry_verdict(days_left: i32) -> Result<String, String> {
    if days_left < 0 {
        Err(format!("expired {} day(s) ago", -days_left))
    } else if days_left < EXPIRY_WARN_DAYS {
        Err(format!("expires in {days_left} day(s)"))
    } else {
        Ok(format!("valid for {days_left} more day(s)"))
    }
}

/// A private key readable by group or others is a problem.
pub fn key_mode_verdict(mode: u32) -> Result<(), String> {
    if mode & 0o077 != 0 {
        Err(format!(
            "mode {:04o} lets other users read it",
            mode & 0o7777
        ))
    } else {
        Ok(())
    }
}

/// Skew verdict for `skew_ms` (local clock minus Mirage's, measured with `rtt_ms`).
pub fn skew_verdict(skew_ms: i64, rtt_ms: u64) -> Result<String, String> {
    let text = format!(
        "{} ms {} Mirage (±{} ms)",
        skew_ms.abs(),
        if skew_ms >= 0 { "ahead of" } else { "behind" },
        rtt_ms / 2 + 1
    );
    if skew_ms.abs() > SKEW_WARN_MS + (rtt_ms / 2) as i64 {
        Err(text)
    } else {
        Ok(text)
    }
}

fn read(p: &str) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("cannot read {p}: {e}"))
}

/// Checks a certificate file: it parses, its expiry, and (with `ca_file`) that it chains to
/// that CA. `label` names the config key (e.g. `tls.cert_file`).
pub fn check_cert(r: &mut Report, label: &str, cert_file: &str, ca_file: Option<&str>) {
    let cert = match read(cert_file).and_then(|b| {
        X509::stack_from_pem(&b).map_err(|e| format!("{cert_file} is not PEM certificates: {e}"))
    }) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            r.problem(
                "cert",
                format!("{label} {cert_file}: no certificate in it"),
                "point it at the PEM file `mirage certs init` wrote",
            );
            return;
        }
        Err(e) => {
            r.problem(
                "cert",
                format!("{label}: {e}"),
                "point it at the PEM file `mirage certs init` wrote (or issue one: `mirage certs add-ghost`)",
            );
            return;
        }
    };
    let leaf = &cert[0];
    let days = openssl::asn1::Asn1Time::days_from_now(0)
        .ok()
        .and_then(|now| now.diff(leaf.not_after()).ok())
        .map(|d| d.days);
    match days.map(expiry_verdict) {
        Some(Ok(v)) => r.ok("cert", format!("{label} {cert_file}: {v}")),
        Some(Err(v)) => r.problem(
            "cert",
            format!("{label} {cert_file}: {v}"),
            "issue a new one: `mirage certs rotate --dir PKI GHOST_ID` for a Ghost, `mirage certs init` for a new fleet",
        ),
        None => r.problem(
            "cert",
            format!("{label} {cert_file}: its expiry cannot be read"),
            "re-issue it with `mirage certs`",
        ),
    }
    let Some(ca_file) = ca_file.filter(|c| !c.is_empty()) else {
        return;
    };
    let verdict = (|| -> Result<(), String> {
        let cas = X509::stack_from_pem(&read(ca_file)?)
            .map_err(|e| format!("{ca_file} is not PEM certificates: {e}"))?;
        let mut b = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        for ca in cas {
            b.add_cert(ca).map_err(|e| e.to_string())?;
        }
        let store = b.build();
        let mut chain = openssl::stack::Stack::new().map_err(|e| e.to_string())?;
        for c in cert.iter().skip(1) {
            chain.push(c.clone()).map_err(|e| e.to_string())?;
        }
        let mut ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
        let (ok, why) = ctx
            .init(&store, leaf, &chain, |c| {
                Ok((c.verify_cert()?, c.error().error_string().to_owned()))
            })
            .map_err(|e| e.to_string())?;
        if ok {
            Ok(())
        } else {
            Err(why)
        }
    })();
    match verdict {
        Ok(()) => r.ok("cert", format!("{label} {cert_file}: chains to {ca_file}")),
        Err(e) => r.problem(
            "cert",
            format!("{label} {cert_file} does not verify against {ca_file}: {e}"),
            "use the certificate and CA from the same `mirage certs init` directory",
        ),
    }
}

/// Checks a private key: mode 0600 or tighter, it parses, and it belongs to `cert_file`.
pub fn check_key(r: &mut Report, label: &str, key_file: &str, cert_file: Option<&str>) {
    match std::fs::metadata(key_file) {
        Ok(m) => match key_mode_verdict(m.permissions().mode()) {
            Ok(()) => r.ok(
                "key",
                format!(
                    "{label} {key_file}: mode {:04o}",
                    m.permissions().mode() & 0o7777
                ),
            ),
            Err(e) => r.problem(
                "key",
                format!("{label} {key_file}: {e}"),
                format!("chmod 600 {key_file}"),
            ),
        },
        Err(e) => {
            r.problem(
                "key",
                format!("{label} {key_file}: {e}"),
                "point it at the .key file `mirage certs init` wrote",
            );
            return;
        }
    }
    let key = match read(key_file)
        .and_then(|b| PKey::private_key_from_pem(&b).map_err(|e| format!("{key_file}: {e}")))
    {
        Ok(k) => k,
        Err(e) => {
            r.problem(
                "key",
                format!("{label}: not a PEM private key: {e}"),
                "use the PKCS#8 .key file `mirage certs` wrote",
            );
            return;
        }
    };
    let Some(cert_file) = cert_file else {
        return;
    };
    let Ok(cert) = read(cert_file).and_then(|b| X509::from_pem(&b).map_err(|e| e.to_string()))
    else {
        return; // check_cert reports it
    };
    match cert.public_key().map(|p| p.public_eq(&key)) {
        Ok(true) => r.ok("key", format!("{label} {key_file}: matches {cert_file}")),
        _ => r.problem(
            "key",
            format!("{label} {key_file} is not the key of {cert_file}"),
            "install the .pem and .key of the same issue together (a rotation writes both)",
        ),
    }
}

/// Checks that `addr` can be bound now (the service is not running, or it is this one).
pub fn check_bind(r: &mut Report, label: &str, addr: &str) {
    match TcpListener::bind(addr) {
        Ok(_) => r.ok("port", format!("{label} {addr}: bindable")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => r.problem(
            "port",
            format!("{label} {addr}: already in use"),
            format!(
                "stop what listens there (`ss -ltnp 'sport = :{}'`), or choose another {label}; if it is this service already running, that is expected",
                addr.rsplit(':').next().unwrap_or("PORT")
            ),
        ),
        Err(e) => r.problem(
            "port",
            format!("{label} {addr}: cannot bind: {e}"),
            format!("set {label} to an address of this host (ip:port), e.g. 127.0.0.1:7000"),
        ),
    }
}

/// Checks the data directory: it exists (or its parent lets it be made), is a directory,
/// can be written, and is not writable by others.
pub fn check_data_dir(r: &mut Report, dir: &Path) {
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Created with its parents at start: the nearest existing ancestor decides.
            let parent = dir
                .ancestors()
                .skip(1)
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .find(|p| p.exists())
                .unwrap_or(Path::new("/"));
            if writable(parent) {
                r.ok(
                    "data",
                    format!("data_dir {shown}: absent; it will be created"),
                );
            } else {
                r.problem(
                    "data",
                    format!(
                        "data_dir {shown}: absent, and {} is not writable",
                        parent.display()
                    ),
                    format!(
                        "mkdir -p {shown} && chown THE_SERVICE_USER {shown} && chmod 700 {shown}"
                    ),
                );
            }
            return;
        }
        Err(e) => {
            r.problem(
                "data",
                format!("data_dir {shown}: {e}"),
                format!("check the path and its parents' permissions (`namei -l {shown}`)"),
            );
            return;
        }
    };
    if !meta.is_dir() {
        r.problem(
            "data",
            format!("data_dir {shown} is not a directory"),
            "point data_dir at a directory",
        );
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        r.problem(
            "data",
            format!("data_dir {shown}: mode {mode:04o}, writable by every user"),
            format!("chmod 700 {shown}"),
        );
    } else if !writable(dir) {
        r.problem(
            "data",
            format!("data_dir {shown}: not writable by this user"),
            format!("chown THE_SERVICE_USER {shown} (or run as the user that owns it)"),
        );
    } else {
        r.ok(
            "data",
            format!("data_dir {shown}: writable, mode {mode:04o}"),
        );
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Checks that `addr` (host:port) accepts a TCP connection within 3 s.
pub fn check_reachable(r: &mut Report, label: &str, addr: &str) {
    let res = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
        .and_then(|a| {
            TcpStream::connect_timeout(&a, Duration::from_secs(3)).map_err(|e| e.to_string())
        });
    match res {
        Ok(_) => r.ok("network", format!("{label} {addr}: reachable")),
        Err(e) => r.problem(
            "network",
            format!("{label} {addr}: {e}"),
            "start Mirage (`systemctl start mirage`), or fix the address and the firewall between",
        ),
    }
}

/// `now_ms` from Mirage's `GET /healthz` at `api` (http:// or https:// with `ca_file`), and
/// the round trip: the clock skew is local − (Mirage + rtt/2).
pub fn mirage_clock(api: &str, ca_file: Option<&str>) -> Result<(i64, u64), String> {
    let (tls, rest) = match (api.strip_prefix("https://"), api.strip_prefix("http://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => {
            return Err(format!(
                "{api:?}: expected http://host:port or https://host:port"
            ))
        }
    };
    let host = rest.split('/').next().unwrap_or("");
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let before = crate::now_ms();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("{api}: {e}"))?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut body = Vec::new();
    if tls {
        let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
            .map_err(|e| e.to_string())?;
        if let Some(ca) = ca_file.filter(|c| !c.is_empty()) {
            b.set_ca_file(ca).map_err(|e| format!("{ca}: {e}"))?;
        }
        let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let mut s = b
            .build()
            .connect(name, tcp)
            .map_err(|e| format!("TLS with {api}: {e}"))?;
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let _ = s.take(64 * 1024).read_to_end(&mut body);
    } else {
        let mut s = tcp;
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let _ = s.take(64 * 1024).read_to_end(&mut body);
    }
    let after = crate::now_ms();
    let text = String::from_utf8_lossy(&body);
    let mut lines = BufReader::new(text.as_bytes()).lines();
    let status = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("{api}/healthz answered {status:?}"));
    }
    let json = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let mirage_ms = json
        .split("\"now_ms\":")
        .nth(1)
        .and_then(|r| {
            r.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .ok_or_else(|| format!("{api}/healthz carries no now_ms (a Mirage older than doctor?)"))?;
    let rtt = after.saturating_sub(before);
    let skew = (before + rtt / 2) as i64 - mirage_ms as i64;
    Ok((skew, rtt))
}

/// The clock check: `mirage_clock` turned into a finding.
pub fn check_skew(r: &mut Report, api: &str, ca_file: Option<&str>) {
    match mirage_clock(api, ca_file) {
        Ok((skew, rtt)) => match skew_verdict(skew, rtt) {
            Ok(v) => r.ok("clock", v),
            Err(v) => r.problem(
                "clock",
                format!("this clock is {v}"),
                "run NTP on both hosts (`timedatectl set-ntp true`; check `chronyc tracking` or `timedatectl timesync-status`)",
            ),
        },
        Err(e) => r.problem(
            "clock",
            format!("cannot read Mirage's clock: {e}"),
            "pass Mirage's HTTP API with --mirage-api URL (it must be reachable from here)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert!(expiry_verdict(-2).unwrap_err().contains("expired 2"));
        assert!(expiry_verdict(5).unwrap_err().contains("in 5"));
        assert!(expiry_verdict(300).is_ok());
        assert!(key_mode_verdict(0o100600).is_ok());
        assert!(key_mode_verdict(0o100400).is_ok());
        assert!(key_mode_verdict(0o100644).unwrap_err().contains("0644"));
        assert!(skew_verdict(300, 10).is_ok());
        assert!(skew_verdict(-3_600_000, 10).unwrap_err().contains("behind"));
        assert!(
            skew_verdict(2500, 2000).is_ok(),
            "within the measurement error"
        );
    }

    #[test]
    fn a_report_counts_problems_and_prints_fixes() {
        let mut r = Report::default();
        r.ok("port", "a: bindable");
        assert_eq!(r.print(&mut Vec::new()), 0);
        r.problem("key", "k: mode 0644", "chmod 600 k");
        let mut out = Vec::new();
        assert_eq!(r.print(&mut out), 1);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("PROBLEM  key"), "{text}");
        assert!(text.contains("fix: chmod 600 k"), "{text}");
        assert!(text.contains("1 problem(s) found (2 checks)"), "{text}");
    }
}
