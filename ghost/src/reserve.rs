//! The outbox's disk reserve: a preallocated file in the data dir (`outbox.reserve`,
//! `outbox.reserve_bytes`). When a write of the store fails (a full disk, whoever filled
//! it), the file is deleted and the write tried again, so terminal events still reach the
//! outbox while the operator makes room. It is made again once the disk has room for it
//! twice over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, FallocateFlags, Mode, OFlags};
use rustix::io::Errno;

pub const FILE: &str = "outbox.reserve";

#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    held: AtomicBool,
}

impl Reserve {
    pub fn new(data_dir: &Path, bytes: u64) -> Reserve {
        Reserve {
            path: data_dir.join(FILE),
            bytes,
            held: AtomicBool::new(false),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Makes sure the reserve file is there. `Ok(false)`: off (0 bytes), or the disk has
    /// less than twice the reserve free (taking it would only move the full disk closer).
    pub fn ensure(&self) -> Result<bool, String> {
        if self.bytes == 0 {
            return Ok(false);
        }
        if let Ok(md) = std::fs::metadata(&self.path) {
            if md.len() >= self.bytes {
                self.held.store(true, Ordering::Relaxed);
                return Ok(true);
            }
        }
        let ctx =
            |e: &dyn std::fmt::Display| format!("outbox reserve {}: {e}", self.path.display());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let vfs = rfs::statvfs(dir).map_err(|e| ctx(&e))?;
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        if free < self.bytes.saturating_mul(2) {
            return Ok(false);
        }
        let fd = rfs::open(
            &self.path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| ctx(&e))?;
        // Real blocks, not a sparse file: only allocated space can be given back.
        let made = match rfs::fallocate(&fd, FallocateFlags::empty(), 0, self.bytes) {
            Ok(()) => Ok(()),
            Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => {
                use std::io::Write;
                let mut f = std::fs::File::from(fd.try_clone().map_err(|e| ctx(&e))?);
                let chunk = vec![0u8; 64 * 1024];
                let mut left = self.bytes;
                let mut r = Ok(());
                while left > 0 && r.is_ok() {
                    let n = left.min(chunk.len() as u64) as usize;
                    r = f.write_all(&chunk[..n]);
                    left -= n as u64;
                }
                r.map_err(|e| ctx(&e))
            }
            Err(e) => Err(ctx(&e)),
        }
        .and_then(|()| rfs::fsync(&fd).map_err(|e| ctx(&e)));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&self.path);
            return Err(e);
        }
        self.held.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Gives the reserved space back to the disk; true if there was any to give.
    pub fn release(&self) -> bool {
        if !self.held.swap(false, Ordering::Relaxed) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(component = "ghost.outbox", path = %self.path.display(), error = %e, "cannot remove the outbox reserve");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_released_and_made_again() {
        let dir = std::env::temp_dir().join(format!("ghost-reserve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let r = Reserve::new(&dir, 64 * 1024);
        assert!(r.ensure().unwrap());
        assert!(r.held());
        assert_eq!(std::fs::metadata(dir.join(FILE)).unwrap().len(), 64 * 1024);
        assert!(r.release());
        assert!(!dir.join(FILE).exists());
        assert!(!r.release(), "nothing left to give");
        assert!(r.ensure().unwrap());
        assert!(!Reserve::new(&dir, 0).ensure().unwrap(), "0 = off");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
