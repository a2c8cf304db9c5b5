//! Ghost configuration: TOML, every key defaulted, flags override (see config/ghost.toml).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shared::session::{Backoff, Timeouts};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// No Mirage session: seeds run only through the admin boundary or `ghost exec`.
    Headless,
    /// Connect in the background and keep retrying; never exit because of Mirage.
    #[default]
    Auto,
    /// Exit with an error if the first registration does not succeed within
    /// `max_connect_attempts`, or Mirage rejects it; after that, like `auto`.
    Required,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirageConfig {
    pub policy: Policy,
    /// Tried in order; on failure the next one is dialled.
    pub addresses: Vec<String>,
    /// Declared identity; empty means the ghost_id.
    pub peer_identity: String,
    /// `required` only: dial attempts before giving up at startup.
    pub max_connect_attempts: u32,
    /// Events on the wire awaiting their ack at once.
    pub max_in_flight: usize,
}

impl Default for MirageConfig {
    fn default() -> Self {
        MirageConfig {
            policy: Policy::Auto,
            addresses: vec!["127.0.0.1:9000".into()],
            peer_identity: String::new(),
            max_connect_attempts: 5,
            max_in_flight: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`; empty = admin boundary off. Must be loopback unless `token` is set.
    pub listen: String,
    /// Required as `"token"` in every request when set.
    pub token: String,
    /// `execute` and `execute_envelope` run seeds, so without `token` they are refused
    /// unless this is true (for an edgectl Mirage, which cannot send a token). Loopback only.
    pub execute_without_token: bool,
    /// A connection has this long to complete each request line (from connecting, or from
    /// its previous answer); then it is closed. Bounds how long an idle, half-open or
    /// byte-dribbling connection holds one of the 64 connection slots.
    pub idle_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: String::new(),
            token: String::new(),
            execute_without_token: false,
            idle_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupeConfig {
    /// command_ids are remembered at least this long (≥ 15 minutes).
    pub window_ms: u64,
    pub max_entries: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_ms: 15 * 60 * 1000,
            max_entries: 200_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedConfig {
    /// seed.fs root; empty = `<data_dir>/fs`.
    pub fs_root: String,
    pub fs_max_file_bytes: u64,
    /// Quota: total bytes of files under the seed.fs root; a write past it is refused.
    /// 0 = no quota.
    pub fs_max_total_bytes: u64,
    pub kv_max_keys: usize,
    pub kv_max_value_bytes: usize,
    pub flow_max_sleep_ms: u64,
    /// Commands queued per seed before new ones are refused.
    pub mailbox: usize,
    /// stdout/stderr kept per event (longer output is truncated, marked).
    pub max_output_bytes: usize,
    /// How long each seed may take to stop on shutdown (its children, its state).
    pub stop_grace_ms: u64,
}

impl Default for SeedConfig {
    fn default() -> Self {
        SeedConfig {
            fs_root: String::new(),
            fs_max_file_bytes: 1024 * 1024,
            fs_max_total_bytes: 1024 * 1024 * 1024,
            kv_max_keys: 100_000,
            kv_max_value_bytes: 64 * 1024,
            flow_max_sleep_ms: 60_000,
            mailbox: 1024,
            max_output_bytes: 64 * 1024,
            stop_grace_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Bytes preallocated in `data_dir/outbox.reserve` and given back to the disk when the
    /// store cannot write (a full disk), so terminal events are still persisted. 0 = off.
    pub reserve_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            reserve_bytes: 8 * 1024 * 1024,
        }
    }
}

// `[tls]` is defined beside its rules in `tls.rs` (config depends on tls, not the reverse).
pub use crate::tls::{SecurityMode, TlsConfig};

/// The optional HMAC-SHA256 frame auth block (PROTOCOL.md §6).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret shared with Mirage; set = every frame this Ghost sends is signed.
    pub key: String,
    /// Key name in the block; empty = the ghost_id.
    pub key_id: String,
    /// Refuse frames from Mirage without a valid block.
    pub required: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GhostConfig {
    pub ghost_id: String,
    pub data_dir: PathBuf,
    /// Built-in seeds to host: seed.flow, seed.kv, seed.fs. `[]` is valid.
    pub seeds: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub mirage: MirageConfig,
    pub admin: AdminConfig,
    pub timeouts: Timeouts,
    pub backoff: Backoff,
    pub dedupe: DedupeConfig,
    pub seed: SeedConfig,
    pub outbox: OutboxConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    /// Children started through `spawn_ghost` at most.
    pub max_children: usize,
    /// `[services.NAME]`: the allowlist of processes seed.service may run.
    pub services: std::collections::BTreeMap<String, crate::seeds::service::ServiceSpec>,
    /// `[redis.NAME]`: seed.redis instances declared ahead (port, restart, autostart).
    pub redis: std::collections::BTreeMap<String, crate::seeds::redis::RedisSpec>,
    /// `[kdht]`: seed.kdht's port (0 = ephemeral), replication factor, store bounds.
    pub kdht: crate::seeds::kdht::KdhtSpec,
}

impl Default for GhostConfig {
    fn default() -> Self {
        GhostConfig {
            ghost_id: "ghost.local".into(),
            data_dir: PathBuf::from("data/ghost"),
            seeds: vec!["seed.flow".into(), "seed.kv".into(), "seed.fs".into()],
            labels: Default::default(),
            mirage: MirageConfig::default(),
            admin: AdminConfig::default(),
            timeouts: Timeouts::default(),
            backoff: Backoff::default(),
            dedupe: DedupeConfig::default(),
            seed: SeedConfig::default(),
            outbox: OutboxConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            max_children: 16,
            services: Default::default(),
            redis: Default::default(),
            kdht: Default::default(),
        }
    }
}

impl GhostConfig {
    pub fn load(path: &Path) -> Result<GhostConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    pub fn fs_root(&self) -> PathBuf {
        if self.seed.fs_root.is_empty() {
            self.data_dir.join("fs")
        } else {
            PathBuf::from(&self.seed.fs_root)
        }
    }

    pub fn peer_identity(&self) -> &str {
        if self.mirage.peer_identity.is_empty() {
            &self.ghost_id
        } else {
            &self.mirage.peer_identity
        }
    }

    /// Checked once at startup, with messages that say what to change.
    pub fn validate(&self) -> Result<(), String> {
        shared::handshake::validate_ghost_id(&self.ghost_id)
            .map_err(|e| format!("ghost_id {:?}: {e}", self.ghost_id))?;
        self.timeouts.validate()?;
        if self.dedupe.window_ms < 15 * 60 * 1000 {
            return Err(format!(
                "dedupe.window_ms is {}; it must be at least 900000 (15 minutes)",
                self.dedupe.window_ms
            ));
        }
        if self.mirage.policy != Policy::Headless {
            if self.mirage.addresses.is_empty() {
                return Err("mirage.addresses is empty; give at least one host:port or set mirage.policy = \"headless\"".into());
            }
            for a in &self.mirage.addresses {
                if a.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(format!("mirage.addresses: {a:?} is not host:port"));
                }
            }
        }
        if self.admin.idle_timeout_ms == 0 {
            return Err("admin.idle_timeout_ms must be above 0".into());
        }
        if !self.admin.listen.is_empty() {
            let addr: SocketAddr =
                self.admin.listen.parse().map_err(|_| {
                    format!("admin.listen {:?} is not an ip:port", self.admin.listen)
                })?;
            if !addr.ip().is_loopback() && self.admin.token.is_empty() {
                return Err(format!(
                    "admin.listen {addr} is not loopback; set admin.token to expose the admin boundary"
                ));
            }
        }
        crate::seeds::service::validate(&self.services)?;
        crate::seeds::redis::validate(&self.redis)?;
        self.kdht.validate()?;
        if self.seed.stop_grace_ms == 0 || self.seed.stop_grace_ms > 600_000 {
            return Err(format!(
                "seed.stop_grace_ms is {}; it must be between 1 and 600000",
                self.seed.stop_grace_ms
            ));
        }
        if self.auth.required && self.auth.key.is_empty() {
            return Err("auth.required needs auth.key (the secret shared with Mirage)".into());
        }
        crate::tls::validate(&self.tls)
    }

    /// (key_id, key) for signing and checking frames, when a key is set.
    pub fn auth_key(&self) -> Option<(String, Vec<u8>)> {
        if self.auth.key.is_empty() {
            return None;
        }
        let id = if self.auth.key_id.is_empty() {
            self.ghost_id.clone()
        } else {
            self.auth.key_id.clone()
        };
        Some((id, self.auth.key.as_bytes().to_vec()))
    }

    /// The name the Mirage certificate must carry: `tls.server_name`, else the host of the
    /// first Mirage address.
    pub fn server_name(&self, addr: &str) -> String {
        if !self.tls.server_name.is_empty() {
            return self.tls.server_name.clone();
        }
        addr.rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .unwrap_or_else(|| addr.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/ghost.toml"));
        let c = GhostConfig::load(p).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn refuses_bad_settings_with_clear_words() {
        let mut c = GhostConfig::default();
        assert!(c.validate().is_ok());
        c.admin.listen = "0.0.0.0:7010".into();
        assert!(c.validate().unwrap_err().contains("admin.token"));
        c.admin.token = "t".into();
        assert!(c.validate().is_ok());
        c.admin.idle_timeout_ms = 0;
        assert!(c.validate().unwrap_err().contains("idle_timeout_ms"));
        c.admin.idle_timeout_ms = 1;
        c.dedupe.window_ms = 1000;
        assert!(c.validate().unwrap_err().contains("15 minutes"));
        let e = toml::from_str::<GhostConfig>("ghost_idd = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"));
    }
}
