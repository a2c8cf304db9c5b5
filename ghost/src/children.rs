//! Child Ghost processes started through the admin `spawn_ghost` action: a real
//! `ghost serve` process each, with a derived id, its own data dir and admin address.
//! Bounded in number; killed when the parent stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::config::GhostConfig;

/// Loopback unless a token is configured (a spawned child's admin address).
pub fn admin_addr_allowed(addr: &str, token: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|_| format!("admin_addr {addr:?} is not ip:port"))?;
    if !a.ip().is_loopback() && token.is_empty() {
        return Err(format!(
            "admin_addr {a} is not loopback and no admin token is set"
        ));
    }
    Ok(a)
}

/// edgectl's rule: lower-case, keep `[a-z0-9]`, `. - _` and space become `.`, others dropped,
/// dots trimmed, doubled dots collapsed.
pub fn derive_suffix(target: &str) -> String {
    let mut s = String::new();
    for c in target.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' => s.push(c),
            '.' | '-' | '_' | ' ' => s.push('.'),
            _ => {}
        }
    }
    let mut s = s.trim_matches('.').to_owned();
    while s.contains("..") {
        s = s.replace("..", ".");
    }
    s
}

/// The child's config holds the admin token and the HMAC key: the file is 0600 in a 0700
/// directory, tightened if they already existed.
fn write_private(dir: &Path, file: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let ctx = |p: &Path, e: std::io::Error| format!("ghost: child config {}: {e}", p.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ctx(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ctx(dir, e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| ctx(file, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ctx(file, e))?;
    f.write_all(text.as_bytes()).map_err(|e| ctx(file, e))
}

struct ChildInfo {
    admin_addr: String,
    child: Child,
    data_dir: PathBuf,
}

#[derive(Default)]
pub struct Children {
    map: BTreeMap<String, ChildInfo>,
}

impl Children {
    pub fn spawn(
        &mut self,
        parent: &GhostConfig,
        target_name: &str,
        admin_addr: &str,
    ) -> Result<(String, String), String> {
        let suffix = derive_suffix(target_name);
        if suffix.is_empty() {
            return Err("ghost: target_name required".into());
        }
        if admin_addr.trim().is_empty() {
            return Err("ghost: admin_addr required".into());
        }
        admin_addr_allowed(admin_addr.trim(), &parent.admin.token)?;
        self.reap();
        if self.map.len() >= parent.max_children {
            return Err(format!(
                "ghost: child limit of {} reached",
                parent.max_children
            ));
        }
        let id = format!("{}.{suffix}", parent.ghost_id);
        if self.map.contains_key(&id) {
            return Err(format!("ghost: managed ghost {id} already exists"));
        }
        let mut cfg = parent.clone();
        cfg.ghost_id = id.clone();
        cfg.admin.listen = admin_addr.trim().to_owned();
        cfg.data_dir = parent.data_dir.join("children").join(&id);
        cfg.seed.fs_root = String::new();
        cfg.max_children = 0;
        cfg.validate()?;
        let cfg_path = cfg.data_dir.join("ghost.toml");
        let text = toml::to_string(&cfg).map_err(|e| format!("ghost: child config: {e}"))?;
        write_private(&cfg.data_dir, &cfg_path, &text)?;
        let log = std::fs::File::create(cfg.data_dir.join("ghost.log"))
            .map_err(|e| format!("ghost: child log: {e}"))?;
        let exe = std::env::current_exe().map_err(|e| format!("ghost: own executable: {e}"))?;
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("ghost: spawn child: {e}"))?;
        tracing::info!(component = "ghost.admin", child = %id, pid = child.id(), admin = %cfg.admin.listen, "spawned child ghost");
        self.map.insert(
            id.clone(),
            ChildInfo {
                admin_addr: cfg.admin.listen.clone(),
                child,
                data_dir: cfg.data_dir,
            },
        );
        Ok((id, admin_addr.trim().to_owned()))
    }

    /// Forgets children that have exited.
    fn reap(&mut self) {
        self.map
            .retain(|_, c| matches!(c.child.try_wait(), Ok(None)));
    }

    pub fn list(&self) -> Vec<Value> {
        self.map
            .iter()
            .map(|(id, c)| {
                json!({"ghost_id": id, "admin_addr": c.admin_addr, "pid": c.child.id(),
                       "data_dir": c.data_dir})
            })
            .collect()
    }

    pub fn shutdown(&mut self) {
        for (id, mut c) in std::mem::take(&mut self.map) {
            let _ = c.child.kill();
            let _ = c.child.wait();
            tracing::info!(component = "ghost", child = %id, "stopped child ghost");
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_config_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ghost-child-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sub = dir.join("children").join("c");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = sub.join("ghost.toml");
        std::fs::write(&f, "old").unwrap();
        write_private(&sub, &f, "token = \"x\"").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "token = \"x\"");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn suffix_rules() {
        assert_eq!(derive_suffix("edge-1"), "edge.1");
        assert_eq!(derive_suffix(" Edge__Box!! "), "edge.box");
        assert_eq!(derive_suffix("..."), "");
    }
}
