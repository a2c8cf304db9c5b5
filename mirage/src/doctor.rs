//! `mirage doctor`: the config parses and validates, the TLS files are sound, the ports can
//! be bound, the data directory is usable. Every problem is printed with its fix.

use std::path::Path;

use shared::doctor::{check_bind, check_cert, check_data_dir, check_key, Report};

use crate::config::MirageConfig;

pub fn run(config: Option<&Path>) -> Report {
    let mut r = Report::default();
    let cfg = match config {
        Some(p) => match MirageConfig::load(p) {
            Ok(c) => {
                r.ok("config", format!("{} parsed", p.display()));
                c
            }
            Err(e) => {
                r.problem(
                    "config",
                    e,
                    "fix the key or value named (config/mirage.toml documents every key)",
                );
                return r;
            }
        },
        None => {
            r.ok("config", "no --config: the built-in defaults");
            MirageConfig::default()
        }
    };
    match cfg.validate() {
        Ok(()) => r.ok("config", "settings are consistent"),
        Err(e) => r.problem("config", e.clone(), fix_for(&e)),
    }
    let t = &cfg.tls;
    if t.enabled {
        let ca = (!t.ca_file.is_empty()).then_some(t.ca_file.as_str());
        if !t.cert_file.is_empty() {
            check_cert(&mut r, "tls.cert_file", &t.cert_file, ca);
        }
        if !t.key_file.is_empty() {
            check_key(&mut r, "tls.key_file", &t.key_file, Some(&t.cert_file));
        }
        if let Some(ca) = ca {
            check_cert(&mut r, "tls.ca_file", ca, None);
        }
        if !t.revoked_file.is_empty() {
            match std::fs::read_to_string(&t.revoked_file)
                .map_err(|e| e.to_string())
                .and_then(|s| crate::tls::parse_revoked(&s))
            {
                Ok(s) => r.ok(
                    "cert",
                    format!("tls.revoked_file {}: {} serial(s)", t.revoked_file, s.len()),
                ),
                Err(e) => r.problem(
                    "cert",
                    format!("tls.revoked_file {}: {e}", t.revoked_file),
                    "Mirage refuses every client certificate until it reads: restore it (`mirage certs init` writes an empty one)",
                ),
            }
        }
    } else {
        r.ok("cert", "tls.enabled = false: no certificates to check");
    }
    if !cfg.api.tls_cert_file.is_empty() {
        check_cert(&mut r, "api.tls_cert_file", &cfg.api.tls_cert_file, None);
        check_key(
            &mut r,
            "api.tls_key_file",
            &cfg.api.tls_key_file,
            Some(&cfg.api.tls_cert_file),
        );
    }
    check_bind(&mut r, "listen", &cfg.listen);
    if !cfg.api.listen.is_empty() {
        check_bind(&mut r, "api.listen", &cfg.api.listen);
    }
    check_data_dir(&mut r, &cfg.data_dir);
    r
}

fn fix_for(e: &str) -> String {
    if e.contains("token") {
        "set api.token (or MIRAGE_TOKEN), or keep api.listen on 127.0.0.1".into()
    } else if e.contains("loopback") {
        "run `mirage certs init` and set the [tls] block it prints, or listen on 127.0.0.1".into()
    } else {
        "change the setting named; config/mirage.toml documents each".into()
    }
}
