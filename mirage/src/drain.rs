//! Drained Ghosts (`mirage ghost drain ID`): no new step is placed on them, commands already
//! sent run to their end. Kept in `data_dir/drained.txt`, one ghost_id a line, so a drain
//! survives a Mirage restart (an operator draining a node for maintenance expects it to stay
//! drained until `undrain`).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE: &str = "drained.txt";
/// A bound on the list: far above any fleet drained at once, far below a memory concern.
pub const MAX: usize = 100_000;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The drained set; a missing file is an empty set.
pub fn load(data_dir: &Path) -> Result<BTreeSet<String>, String> {
    let p = path(data_dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

pub fn parse(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .take(MAX)
        .map(str::to_owned)
        .collect()
}

/// Writes the set atomically (temp file, fsync, rename), so a crash leaves the old or the
/// new list, never half of one.
pub fn save(data_dir: &Path, set: &BTreeSet<String>) -> Result<(), String> {
    let p = path(data_dir);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let mut body = String::from("# ghost_ids drained by `mirage ghost drain`; `undrain` removes\n");
    for id in set {
        body.push_str(id);
        body.push('\n');
    }
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(body.as_bytes())?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, &p));
    res.map_err(|e| format!("cannot write {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_skips_comments_and_blanks() {
        let dir = std::env::temp_dir().join(format!("mirage-drain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        assert!(load(&dir).unwrap_or_default().is_empty());
        let set: BTreeSet<String> = ["g1", "g 2"].iter().map(|s| s.to_string()).collect();
        assert_eq!(save(&dir, &set), Ok(()));
        assert_eq!(load(&dir), Ok(set));
        assert_eq!(parse("# x\n\n a \n"), ["a".to_string()].into());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
