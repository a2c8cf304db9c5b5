//! The Ghost's instance id: generated once, kept in `<data_dir>/instance_id`, sent in
//! registration. A restart with the same data dir is the same instance (Mirage lets it take
//! its session over); a second process with another data dir is not (Mirage refuses it while
//! the first is alive).

use std::io::Write;
use std::path::Path;

const FILE: &str = "instance_id";

/// Reads the instance id from `dir`, creating it on first start.
pub fn load_or_create(dir: &Path) -> Result<String, String> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            if id.is_empty()
                || id.len() > shared::handshake::MAX_INSTANCE_ID
                || id.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(format!(
                    "{} is not a valid instance id (delete it to have a new one made)",
                    path.display()
                ));
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            // Written whole then renamed, so a crash never leaves half an id behind.
            let tmp = dir.join(format!("{FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(id.as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn created_once_then_kept() {
        let dir = std::env::temp_dir().join(format!("ghost-instance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 36);
        std::fs::write(dir.join(FILE), "has space\n").unwrap();
        assert!(load_or_create(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
