//! Mirage configuration: TOML, every key defaulted (see config/mirage.toml).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shared::session::Timeouts;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Reports kept in memory and in the database.
    pub reports: usize,
    pub reports_per_intent: usize,
    /// Finished intents kept for queries (older ones are forgotten).
    pub finished_intents: usize,
    /// Intents running at once; more are refused with 429.
    pub active_intents: usize,
    /// event_id window for idempotent ingest.
    pub event_window: usize,
    pub event_window_ms: u64,
    /// Connected Ghosts at once.
    pub sessions: usize,
    /// Commands queued for one Ghost's session before it is considered stuck.
    pub session_queue: usize,
    /// Largest frame payload accepted from a Ghost.
    pub max_payload: u64,
    /// Disconnected Ghosts remembered at most; past it the oldest disconnect is forgotten.
    pub disconnected_ghosts: usize,
    /// A disconnected Ghost is forgotten after this long.
    pub disconnected_ghost_ms: u64,
    /// Registrations: seeds in `seed_list` at most.
    pub registration_seeds: usize,
    /// Registrations: bytes of any one name or description (seed or operation) at most.
    pub registration_description_bytes: usize,
    /// Registrations: bytes of the whole `seed.register` line at most (PROTOCOL.md's 128 KiB
    /// is the wire ceiling; this keeps what Mirage remembers per Ghost small).
    pub registration_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            reports: 50_000,
            reports_per_intent: 200,
            finished_intents: 10_000,
            active_intents: 100_000,
            event_window: 20_000,
            event_window_ms: 10 * 60 * 1000,
            sessions: 20_000,
            session_queue: 4096,
            max_payload: shared::wire::DEFAULT_MAX_PAYLOAD,
            disconnected_ghosts: 10_000,
            disconnected_ghost_ms: 24 * 60 * 60 * 1000,
            registration_seeds: 64,
            registration_description_bytes: 1024,
            registration_bytes: 32 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTP API and dashboard; loopback by default.
    pub listen: String,
    /// Bearer token; required when `listen` is not loopback. `MIRAGE_TOKEN` overrides.
    pub token: String,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Optional HTTPS for the API and dashboard: certificate chain and PKCS#8 key (PEM).
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:7000".into(),
            token: String::new(),
            max_body: 1024 * 1024,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `data_dir/mirage.reserve`, preallocated and given back when a write fails on a full
    /// disk, so the WAL can still be checkpointed (folded into mirage.db) and shrunk; made
    /// again once the disk has twice this free. 0 = off.
    pub reserve_bytes: u64,
    /// "sqlite" (one Mirage, `data_dir/mirage.db`) or "etcd" (several Mirages, one leads;
    /// `[store.etcd]`).
    pub backend: String,
    pub etcd: EtcdStoreConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            reserve_bytes: 8 * 1024 * 1024,
            backend: "sqlite".into(),
            etcd: EtcdStoreConfig::default(),
        }
    }
}

/// `[store.etcd]`: Mirage's state in etcd, every write fenced by the leader's election key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdStoreConfig {
    /// Client endpoints, `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// Every key Mirage writes starts with this (several fleets can share one etcd).
    pub prefix: String,
    /// Leader lease TTL (whole seconds in etcd): a dead leader is replaced within about this.
    pub lease_ttl_ms: u64,
    /// Per-endpoint timeout of one etcd call.
    pub timeout_ms: u64,
    /// Operations in one etcd txn at most (etcd's `--max-txn-ops`, 128 by default).
    pub max_txn_ops: usize,
    /// Bytes of keys and values in one etcd txn at most (below etcd's
    /// `--max-request-bytes`, 1.5 MiB by default). A single larger value is refused.
    pub max_txn_bytes: usize,
    /// TLS to etcd: not implemented yet; setting any of these is refused at startup.
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

impl Default for EtcdStoreConfig {
    fn default() -> Self {
        EtcdStoreConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            prefix: "/mirage/".into(),
            lease_ttl_ms: 5000,
            timeout_ms: 1000,
            max_txn_ops: 128,
            max_txn_bytes: 1024 * 1024,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

impl EtcdStoreConfig {
    /// The endpoints as `host:port`.
    pub fn hosts(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| {
                e.strip_prefix("http://")
                    .unwrap_or(e)
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.ca_file.is_empty() || !self.cert_file.is_empty() || !self.key_file.is_empty() {
            return Err("store.etcd: TLS to etcd (ca_file, cert_file, key_file) is not implemented yet; use plain http endpoints on a trusted network (docs/DECISIONS.md, issue 15)".into());
        }
        if self.endpoints.is_empty() {
            return Err("store.etcd.endpoints is empty; give at least one host:port".into());
        }
        for (e, h) in self.endpoints.iter().zip(self.hosts()) {
            if e.starts_with("https://") {
                return Err(format!("store.etcd.endpoints: {e:?}: https is not implemented yet (TLS to etcd is refused for now)"));
            }
            if h.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!("store.etcd.endpoints: {e:?} is not host:port"));
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 {
            return Err(format!(
                "store.etcd.prefix {:?} must start and end with '/' (e.g. \"/mirage/\")",
                self.prefix
            ));
        }
        if self.lease_ttl_ms < 1000 || self.lease_ttl_ms > 600_000 {
            return Err("store.etcd.lease_ttl_ms must be between 1000 and 600000".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err("store.etcd.timeout_ms must be between 1 and 60000".into());
        }
        if self.max_txn_ops < 2 {
            return Err("store.etcd.max_txn_ops must be at least 2".into());
        }
        if self.max_txn_bytes < 64 * 1024 {
            return Err("store.etcd.max_txn_bytes must be at least 65536".into());
        }
        Ok(())
    }
}

/// The optional HMAC-SHA256 frame auth block (PROTOCOL.md §6), keys per Ghost.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Refuse frames without a valid block (code 1000) and close the session.
    pub required: bool,
    /// ghost_id → secret. The key_id in a Ghost's frames must be its own ghost_id.
    pub keys: std::collections::BTreeMap<String, String>,
}

/// A Ghost driven through its admin boundary (`execute_envelope`) instead of its session:
/// an edgectl Ghost, which takes no commands on its session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GhostAdmin {
    pub id: String,
    pub addr: String,
    /// The Ghost's `admin.token`, sent with every request (our Ghost refuses `execute*`
    /// without one unless it sets `admin.execute_without_token`). Empty = none (edgectl).
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirageConfig {
    pub mirage_id: String,
    /// Ghost session listener.
    pub listen: String,
    pub data_dir: PathBuf,
    /// The co-located Ghost preferred for `on = "one"` steps.
    pub local_ghost: String,
    pub api: ApiConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub store: StoreConfig,
    /// Session arbiters (threads); 0 = one per core.
    pub session_threads: usize,
    /// Reconcile tick.
    pub tick_ms: u64,
    pub ghost_admin: Vec<GhostAdmin>,
    pub tls: crate::tls::TlsConfig,
    pub auth: AuthConfig,
}

impl Default for MirageConfig {
    fn default() -> Self {
        MirageConfig {
            mirage_id: "mirage.local".into(),
            listen: "127.0.0.1:9000".into(),
            data_dir: PathBuf::from("data/mirage"),
            local_ghost: "ghost.local".into(),
            api: ApiConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            store: StoreConfig::default(),
            session_threads: 0,
            tick_ms: 250,
            ghost_admin: Vec::new(),
            tls: Default::default(),
            auth: Default::default(),
        }
    }
}

impl MirageConfig {
    pub fn load(path: &Path) -> Result<MirageConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.timeouts.validate()?;
        crate::tls::validate(&self.tls)?;
        match self.store.backend.as_str() {
            "sqlite" => {}
            "etcd" => {
                self.store.etcd.validate()?;
                if !self.api.tls_cert_file.is_empty() {
                    return Err("store.backend = \"etcd\" with api.tls_cert_file: HTTPS on the API of an etcd-backed Mirage is not implemented yet".into());
                }
            }
            other => {
                return Err(format!(
                    "store.backend {other:?}: must be \"sqlite\" or \"etcd\""
                ))
            }
        }
        if self.auth.required && self.auth.keys.is_empty() {
            return Err("auth.required needs [auth.keys] (ghost_id = \"secret\")".into());
        }
        let session: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| format!("listen {:?} is not ip:port", self.listen))?;
        // Off loopback, plaintext sessions with a self-declared identity would let any host
        // that reaches the port register as any ghost_id and take its commands. TLS alone
        // proves Mirage to Ghosts, not Ghosts to Mirage, so it takes client certificates
        // (tls.ca_file) or frame auth.
        let mtls = self.tls.enabled && !self.tls.ca_file.is_empty();
        if !session.ip().is_loopback() && !mtls && !self.auth.required {
            return Err(format!(
                "listen {session} is not loopback and Ghost sessions there are unauthenticated: set tls.enabled = true with tls.ca_file (client certificates, see `mirage certs init`), or auth.required = true with [auth.keys], or listen on 127.0.0.1"
            ));
        }
        if !self.api.listen.is_empty() {
            let a: SocketAddr = self
                .api
                .listen
                .parse()
                .map_err(|_| format!("api.listen {:?} is not ip:port", self.api.listen))?;
            if !a.ip().is_loopback() && self.api.token.is_empty() {
                return Err(format!(
                    "api.listen {a} is not loopback: set api.token (or MIRAGE_TOKEN) to require a bearer token"
                ));
            }
        }
        if self.tick_ms == 0 || self.tick_ms > 10_000 {
            return Err("tick_ms must be between 1 and 10000".into());
        }
        for g in &self.ghost_admin {
            shared::handshake::validate_ghost_id(&g.id)
                .map_err(|e| format!("ghost_admin id {:?}: {e}", g.id))?;
            if g.addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!(
                    "ghost_admin {}: addr {:?} is not host:port",
                    g.id, g.addr
                ));
            }
        }
        if self.api.tls_cert_file.is_empty() != self.api.tls_key_file.is_empty() {
            return Err("api.tls_cert_file and api.tls_key_file go together".into());
        }
        if self.api.max_body < 1024 {
            return Err("api.max_body must be at least 1024".into());
        }
        Ok(())
    }

    pub fn threads(&self) -> usize {
        if self.session_threads > 0 {
            self.session_threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_off_loopback_needs_a_token() {
        let p = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/mirage.toml"
        ));
        MirageConfig::load(p).unwrap().validate().unwrap();
        let mut c = MirageConfig::default();
        c.api.listen = "0.0.0.0:7000".into();
        assert!(c.validate().unwrap_err().contains("token"));
        c.api.token = "t".into();
        c.validate().unwrap();
        // So does a session listener, unless Ghosts must prove who they are.
        let mut c = MirageConfig {
            listen: "0.0.0.0:9000".into(),
            ..MirageConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("tls.ca_file") && e.contains("auth.required"),
            "{e}"
        );
        c.tls.enabled = true;
        c.tls.cert_file = "c.pem".into();
        c.tls.key_file = "k.pem".into();
        assert!(
            c.validate().is_err(),
            "TLS without client certificates is not enough"
        );
        c.tls = Default::default();
        c.auth.required = true;
        c.auth.keys.insert("ghost.a".into(), "s".into());
        c.validate().unwrap();
        // A partial section keeps the other keys' defaults.
        let c: MirageConfig = toml::from_str("[api]\nlisten = \"127.0.0.1:0\"").unwrap();
        assert_eq!(c.api.max_body, 1024 * 1024);
        c.validate().unwrap();
    }

    #[test]
    fn etcd_store_section_is_checked_and_tls_refused_clearly() {
        let parse = |t: &str| toml::from_str::<MirageConfig>(t).unwrap();
        let c = parse("[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://127.0.0.1:2379\", \"10.0.0.2:2379\"]\n");
        c.validate().unwrap();
        assert_eq!(c.store.etcd.hosts(), ["127.0.0.1:2379", "10.0.0.2:2379"]);
        let e = parse("[store]\nbackend = \"etcd\"\n[store.etcd]\nca_file = \"ca.pem\"\n")
            .validate()
            .unwrap_err();
        assert!(e.contains("not implemented yet"), "{e}");
        let e =
            parse("[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"https://e:2379\"]\n")
                .validate()
                .unwrap_err();
        assert!(e.contains("https is not implemented"), "{e}");
        let e = parse("[store]\nbackend = \"etcd\"\n[store.etcd]\nprefix = \"mirage\"\n")
            .validate()
            .unwrap_err();
        assert!(e.contains("must start and end with '/'"), "{e}");
        let e = parse("[store]\nbackend = \"redis\"\n")
            .validate()
            .unwrap_err();
        assert!(e.contains("\"sqlite\" or \"etcd\""), "{e}");
        // SQLite stays the default.
        assert_eq!(MirageConfig::default().store.backend, "sqlite");
    }
}
