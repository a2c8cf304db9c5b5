//! `ghost doctor`: the config parses and validates, the TLS files are sound, the admin port
//! can be bound, the data directory is usable, Mirage is reachable and the clocks agree.
//! Every problem is printed with its fix.

use std::path::Path;

use shared::doctor::{
    check_bind, check_cert, check_data_dir, check_key, check_reachable, check_skew, Report,
};

use crate::config::GhostConfig;

pub fn run(config: Option<&Path>, mirage_api: Option<&str>, ca_file: Option<&str>) -> Report {
    let mut r = Report::default();
    let cfg = match config {
        Some(p) => match GhostConfig::load(p) {
            Ok(c) => {
                r.ok("config", format!("{} parsed", p.display()));
                c
            }
            Err(e) => {
                r.problem(
                    "config",
                    e,
                    "fix the key or value named (config/ghost.toml documents every key)",
                );
                return r;
            }
        },
        None => {
            r.ok("config", "no --config: the built-in defaults");
            GhostConfig::default()
        }
    };
    match cfg.validate() {
        Ok(()) => r.ok("config", "settings are consistent"),
        Err(e) => r.problem(
            "config",
            e,
            "change the setting named; config/ghost.toml documents each",
        ),
    }
    let t = &cfg.tls;
    if t.enabled {
        let ca = (!t.ca_file.is_empty()).then_some(t.ca_file.as_str());
        if let Some(ca) = ca {
            check_cert(&mut r, "tls.ca_file", ca, None);
        }
        if !t.cert_file.is_empty() {
            check_cert(&mut r, "tls.cert_file", &t.cert_file, ca);
            check_key(&mut r, "tls.key_file", &t.key_file, Some(&t.cert_file));
        }
    } else {
        r.ok("cert", "tls.enabled = false: no certificates to check");
    }
    if !cfg.admin.listen.is_empty() {
        check_bind(&mut r, "admin.listen", &cfg.admin.listen);
    }
    check_data_dir(&mut r, &cfg.data_dir);
    if cfg.mirage.policy != crate::config::Policy::Headless {
        for a in &cfg.mirage.addresses {
            check_reachable(&mut r, "mirage.addresses", a);
        }
    }
    match mirage_api {
        Some(api) => {
            let ca = ca_file.or((!t.ca_file.is_empty()).then_some(t.ca_file.as_str()));
            check_skew(&mut r, api, ca);
        }
        None => r.ok(
            "clock",
            "not measured: pass --mirage-api URL (Mirage's HTTP API) to compare clocks",
        ),
    }
    r
}
