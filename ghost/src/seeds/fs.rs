//! `seed.fs`: files under one root, opened by file descriptor relative to the root.
//!
//! Every path component is opened with `openat(…, O_NOFOLLOW)` from the directory before it,
//! so nothing outside the root is ever reached, whatever the tree looks like while we walk
//! it: no `..`, no absolute paths, no symbolic link anywhere (not even one that points
//! inside), and no check-then-open window (the race a path flipped between a file and a
//! link used to win). A file with more than one hard link is refused for every operation:
//! its other name may be outside the root. `write` and `append` never write through an
//! existing file: the new content goes to a temp file in the same directory, is fsynced and
//! renamed over the name (then the directory is fsynced), so no planted link can carry a
//! write outside, and a failed write (a full disk) leaves the old content whole and no temp
//! file behind.
//! File sizes and, optionally, the root's total size are bounded.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use shared::envelope::Args;

use super::{OperationSpec, Seed, SeedOutput};

const MAX_LIST: usize = 10_000;
/// Entries walked when the root's total size is counted (quota); past it the count fails.
const MAX_WALK: usize = 1_000_000;
/// The counted total is trusted this long; our own writes keep it current in between.
const USAGE_TTL: Duration = Duration::from_secs(30);
/// Prefix of `write`'s temp files: hidden from `list`, swept when the root is first counted.
const TMP_PREFIX: &str = ".seedfs-tmp.";

pub struct Fs {
    root: PathBuf,
    max_bytes: u64,
    max_hold_ms: u64,
    /// 0 = no quota on the root's total size.
    max_total_bytes: u64,
    /// Total bytes of regular files under the root, and when it was counted.
    usage: Option<(u64, Instant)>,
    swept: bool,
    tmp_seq: u64,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn file_mode() -> Mode {
    Mode::from_raw_mode(0o644)
}

fn kind(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn symlink_refusal(shown: &str) -> String {
    format!("seed.fs: path escapes root: {shown} is a symbolic link (seed.fs follows no links)")
}

/// A file seed.fs may touch: a regular file with exactly one link.
fn check_file(st: &Stat, shown: &str) -> Result<(), String> {
    match kind(st) {
        FileType::RegularFile => {}
        FileType::Symlink => return Err(symlink_refusal(shown)),
        FileType::Directory => return Err(format!("seed.fs: {shown} is a directory")),
        _ => return Err(format!("seed.fs: {shown} is not a regular file")),
    }
    if st.st_nlink > 1 {
        return Err(format!(
            "seed.fs: refused: {shown} has {} hard links (another name may be outside the root; seed.fs only touches files with one link)",
            st.st_nlink
        ));
    }
    Ok(())
}

/// Whether the process named in a temp file's name (`.seedfs-tmp.<pid>.<n>`) still runs.
fn writer_alive(tmp_name: &str) -> bool {
    tmp_name
        .strip_prefix(TMP_PREFIX)
        .and_then(|r| r.split('.').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists())
}

fn io_err(shown: &str, e: impl std::fmt::Display) -> String {
    format!("seed.fs: {shown}: {e}")
}

/// A path inside the root, split into names; `shown` is the path as given.
struct Rel<'a> {
    shown: &'a str,
    names: Vec<&'a OsStr>,
}

impl Rel<'_> {
    fn parents(&self) -> &[&OsStr] {
        &self.names[..self.names.len().saturating_sub(1)]
    }
    fn leaf(&self) -> Option<&OsStr> {
        self.names.last().copied()
    }
}

impl Fs {
    pub fn new(root: PathBuf, max_bytes: u64) -> Fs {
        Fs {
            root,
            max_bytes,
            max_hold_ms: 60_000,
            max_total_bytes: 0,
            usage: None,
            swept: false,
            tmp_seq: 0,
        }
    }

    /// Bound for `append`'s `hold_ms` (the Ghost passes `seed.flow_max_sleep_ms`).
    pub fn with_max_hold_ms(mut self, ms: u64) -> Fs {
        self.max_hold_ms = ms;
        self
    }

    /// Quota on the total bytes of files under the root (`seed.fs_max_total_bytes`; 0 = off).
    pub fn with_max_total_bytes(mut self, bytes: u64) -> Fs {
        self.max_total_bytes = bytes;
        self
    }

    /// The root itself is the operator's choice and may be reached through links; below it
    /// nothing is followed.
    fn open_root(&self) -> Result<OwnedFd, String> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| format!("seed.fs: root {}: {e}", self.root.display()))?;
        rfs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("seed.fs: root {}: {e}", self.root.display()))
    }

    /// Checks the shape of `path`: relative, no `..`, at least one name.
    fn parse<'a>(&self, path: Option<&'a String>) -> Result<Rel<'a>, String> {
        let p = path.map(|p| p.trim()).unwrap_or("");
        if p.is_empty() {
            return Err("seed.fs: missing path".into());
        }
        let rel = Path::new(p);
        if rel.is_absolute() {
            return Err("seed.fs: absolute path not allowed".into());
        }
        let mut names = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => names.push(n),
                Component::CurDir => {}
                _ => return Err("seed.fs: path escapes root".into()),
            }
        }
        Ok(Rel { shown: p, names })
    }

    /// Opens the directory chain `names` from `root`, one `O_NOFOLLOW` component at a time.
    /// `create` makes missing directories; otherwise a missing one is `Ok(None)`.
    fn open_dirs(
        &self,
        root: &OwnedFd,
        names: &[&OsStr],
        create: bool,
        shown: &str,
    ) -> Result<Option<OwnedFd>, String> {
        let mut cur =
            rfs::openat(root, ".", dir_flags(), Mode::empty()).map_err(|e| io_err("root", e))?;
        let mut walked = PathBuf::new();
        for name in names {
            walked.push(name);
            let at = walked.display().to_string();
            let mut tries = 0;
            let next = loop {
                tries += 1;
                match rfs::openat(&cur, *name, dir_flags(), Mode::empty()) {
                    Ok(fd) => break fd,
                    Err(Errno::NOENT) if create && tries < 3 => {
                        match rfs::mkdirat(&cur, *name, Mode::from_raw_mode(0o755)) {
                            Ok(()) | Err(Errno::EXIST) => continue,
                            Err(e) => return Err(io_err(&at, e)),
                        }
                    }
                    Err(Errno::NOENT) => return Ok(None),
                    Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                        let is_link = rfs::statat(&cur, *name, AtFlags::SYMLINK_NOFOLLOW)
                            .map(|st| kind(&st) == FileType::Symlink)
                            .unwrap_or(false);
                        return Err(if is_link {
                            symlink_refusal(&at)
                        } else {
                            format!("seed.fs: {at} is not a directory (in {shown})")
                        });
                    }
                    Err(e) => return Err(io_err(&at, e)),
                }
            };
            cur = next;
        }
        Ok(Some(cur))
    }

    fn temp_name(&mut self) -> OsString {
        self.tmp_seq += 1;
        OsString::from(format!(
            "{TMP_PREFIX}{}.{}",
            std::process::id(),
            self.tmp_seq
        ))
    }

    /// Walks the tree below `root` without following links: `(relative path, size)` of every
    /// regular file, temp files excluded (and, on the first walk, stale ones removed).
    fn walk(
        &mut self,
        root: &OwnedFd,
        limit: usize,
        mut each: impl FnMut(&str, u64) -> Result<(), String>,
    ) -> Result<(), String> {
        let sweep = !self.swept;
        let ours = format!("{TMP_PREFIX}{}.", std::process::id());
        let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
        let mut seen = 0usize;
        while let Some(rel) = stack.pop() {
            let names: Vec<&OsStr> = rel.iter().collect();
            let Ok(Some(dir)) = self.open_dirs(root, &names, false, "") else {
                continue;
            };
            let Ok(entries) = rfs::Dir::read_from(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = OsStr::from_bytes(e.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                seen += 1;
                if seen > limit {
                    return Err(format!(
                        "seed.fs: more than {limit} entries under the root (to write without counting them, set seed.fs_max_total_bytes = 0)"
                    ));
                }
                let Ok(st) = rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                    continue;
                };
                match kind(&st) {
                    FileType::Directory => stack.push(rel.join(name)),
                    FileType::RegularFile => {
                        let n = name.to_string_lossy();
                        if n.starts_with(TMP_PREFIX) {
                            // Left by a process that stopped mid-write (never a user's file);
                            // one of a live process (a Ghost beside `ghost exec`) is its own.
                            if sweep && !n.starts_with(&ours) && !writer_alive(&n) {
                                let _ = rfs::unlinkat(&dir, name, AtFlags::empty());
                            }
                            continue;
                        }
                        let p = rel.join(name).to_string_lossy().replace('\\', "/");
                        each(&p, st.st_size.max(0) as u64)?;
                    }
                    _ => {}
                }
            }
        }
        self.swept = true;
        Ok(())
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<String>, String> {
        let root = self.open_root()?;
        let mut out = Vec::new();
        self.walk(&root, MAX_WALK, |p, _| {
            if p.starts_with(prefix) {
                out.push(p.to_owned());
                if out.len() > MAX_LIST {
                    return Err(format!(
                        "seed.fs: more than {MAX_LIST} files match; narrow the prefix"
                    ));
                }
            }
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    /// Total bytes under the root (counted at most every `USAGE_TTL`, else kept current).
    fn usage(&mut self, root: &OwnedFd) -> Result<u64, String> {
        if let Some((u, at)) = self.usage {
            if at.elapsed() < USAGE_TTL {
                return Ok(u);
            }
        }
        let mut total = 0u64;
        self.walk(root, MAX_WALK, |_, n| {
            total = total.saturating_add(n);
            Ok(())
        })?;
        self.usage = Some((total, Instant::now()));
        Ok(total)
    }

    fn adjust_usage(&mut self, removed: u64, added: u64) {
        if let Some((u, _)) = &mut self.usage {
            *u = u.saturating_sub(removed).saturating_add(added);
        }
    }

    /// Refuses a change that would take the root over its quota.
    fn check_quota(&mut self, root: &OwnedFd, removed: u64, added: u64) -> Result<(), String> {
        if self.max_total_bytes == 0 {
            return Ok(());
        }
        let now = self.usage(root)?;
        let after = now.saturating_sub(removed).saturating_add(added);
        if added > removed && after > self.max_total_bytes {
            return Err(format!(
                "seed.fs: quota: the root would hold {after} bytes, over seed.fs_max_total_bytes = {} ({now} bytes used)",
                self.max_total_bytes
            ));
        }
        Ok(())
    }

    /// Opens `leaf` in `dir` for reading and checks it by descriptor: a regular file whose
    /// only link is this name (looked up again after the read, so a hard link whose inside
    /// name was removed while we held it open is caught). `None`: no such file.
    fn read_at(
        &self,
        dir: &OwnedFd,
        leaf: &OsStr,
        shown: &str,
    ) -> Result<Option<(Vec<u8>, Stat)>, String> {
        let fd = match rfs::openat(
            dir,
            leaf,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(symlink_refusal(shown)),
            Err(e) => return Err(io_err(shown, e)),
        };
        let st = rfs::fstat(&fd).map_err(|e| io_err(shown, e))?;
        check_file(&st, shown)?;
        let mut buf = Vec::new();
        std::fs::File::from(fd)
            .take(self.max_bytes + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_err(shown, e))?;
        let again = rfs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(shown, format!("changed while read: {e}")))?;
        check_file(&again, shown)?;
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
            return Err(format!("seed.fs: {shown} was replaced while it was read"));
        }
        if buf.len() as u64 > self.max_bytes {
            return Err(format!(
                "seed.fs: file exceeds the limit of {} bytes",
                self.max_bytes
            ));
        }
        Ok(Some((buf, st)))
    }

    /// Replaces `leaf` in `dir` with `parts`: a temp file in the same directory, fsynced,
    /// renamed over the name, then the directory fsynced. An existing file is never written
    /// through (so no link or hard link can carry the write outside), and a failure (a full
    /// disk) leaves the old file whole and removes the temp file.
    fn replace(
        &mut self,
        dir: &OwnedFd,
        leaf: &OsStr,
        shown: &str,
        parts: &[&[u8]],
        mode: Option<u32>,
    ) -> Result<(), String> {
        let tmp = self.temp_name();
        let fd = rfs::openat(
            dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            file_mode(),
        )
        .map_err(|e| io_err(shown, e))?;
        let done = (|| -> Result<(), String> {
            if let Some(m) = mode {
                // Keep the replaced file's permissions.
                let _ = rfs::fchmod(&fd, Mode::from_raw_mode(m & 0o7777));
            }
            let mut f = std::fs::File::from(fd);
            for p in parts {
                f.write_all(p).map_err(|e| io_err(shown, e))?;
            }
            rfs::fsync(&f).map_err(|e| io_err(shown, e))?;
            drop(f);
            rfs::renameat(dir, &tmp, dir, leaf).map_err(|e| io_err(shown, e))
        })();
        if let Err(e) = done {
            let _ = rfs::unlinkat(dir, &tmp, AtFlags::empty());
            self.usage = None;
            return Err(e);
        }
        rfs::fsync(dir).map_err(|e| io_err(shown, format!("written, directory not synced: {e}")))
    }

    fn write(&mut self, rel: &Rel, content: &[u8]) -> Result<(), String> {
        let shown = rel.shown;
        let leaf = rel
            .leaf()
            .ok_or_else(|| format!("seed.fs: {shown} names the root directory"))?;
        if content.len() as u64 > self.max_bytes {
            return Err(format!(
                "seed.fs: content of {} bytes exceeds the limit of {}",
                content.len(),
                self.max_bytes
            ));
        }
        let root = self.open_root()?;
        let dir = self
            .open_dirs(&root, rel.parents(), true, shown)?
            .ok_or_else(|| format!("seed.fs: {shown}: parent directory missing"))?;
        // The name is replaced, never written through; refusing a link or a hard link here
        // tells the caller the truth about the tree (a link planted after this check is
        // replaced by the rename, its target untouched).
        let old = match rfs::statat(&dir, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                check_file(&st, shown)?;
                Some(st)
            }
            Err(Errno::NOENT) => None,
            Err(e) => return Err(io_err(shown, e)),
        };
        let old_len = old.as_ref().map(|s| s.st_size.max(0) as u64).unwrap_or(0);
        self.check_quota(&root, old_len, content.len() as u64)?;
        self.replace(&dir, leaf, shown, &[content], old.map(|s| s.st_mode))?;
        self.adjust_usage(old_len, content.len() as u64);
        Ok(())
    }

    /// The old content and the new, as a new file renamed over the old one: a short append
    /// on a full disk leaves the old file as it was, and no descriptor of an existing file
    /// is ever written to (the race a hard link flipped in could win).
    fn append(&mut self, rel: &Rel, content: &[u8]) -> Result<(), String> {
        let shown = rel.shown;
        let leaf = rel
            .leaf()
            .ok_or_else(|| format!("seed.fs: {shown} names the root directory"))?;
        let root = self.open_root()?;
        let dir = self
            .open_dirs(&root, rel.parents(), true, shown)?
            .ok_or_else(|| format!("seed.fs: {shown}: parent directory missing"))?;
        let (old, mode) = match self.read_at(&dir, leaf, shown)? {
            Some((buf, st)) => (buf, Some(st.st_mode)),
            None => (Vec::new(), None),
        };
        let have = old.len() as u64;
        if have.saturating_add(content.len() as u64) > self.max_bytes {
            return Err(format!(
                "seed.fs: appending {} bytes to {have} exceeds the limit of {}",
                content.len(),
                self.max_bytes
            ));
        }
        self.check_quota(&root, 0, content.len() as u64)?;
        self.replace(&dir, leaf, shown, &[&old, content], mode)?;
        self.adjust_usage(0, content.len() as u64);
        Ok(())
    }

    fn read(&mut self, rel: &Rel) -> Result<Vec<u8>, String> {
        let shown = rel.shown;
        let leaf = rel
            .leaf()
            .ok_or_else(|| format!("seed.fs: {shown} names the root directory"))?;
        let root = self.open_root()?;
        let dir = self
            .open_dirs(&root, rel.parents(), false, shown)?
            .ok_or_else(|| io_err(shown, Errno::NOENT))?;
        match self.read_at(&dir, leaf, shown)? {
            Some((buf, _)) => Ok(buf),
            None => Err(io_err(shown, Errno::NOENT)),
        }
    }

    fn delete(&mut self, rel: &Rel) -> Result<(), String> {
        let shown = rel.shown;
        let leaf = rel
            .leaf()
            .ok_or_else(|| format!("seed.fs: {shown} names the root directory"))?;
        let root = self.open_root()?;
        let Some(dir) = self.open_dirs(&root, rel.parents(), false, shown)? else {
            return Ok(()); // missing is fine
        };
        // unlinkat only ever removes a name in this directory, never what it points to.
        let st = match rfs::statat(&dir, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(io_err(shown, e)),
        };
        check_file(&st, shown)?;
        match rfs::unlinkat(&dir, leaf, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err(shown, e)),
        }
        self.adjust_usage(st.st_size.max(0) as u64, 0);
        rfs::fsync(&dir).map_err(|e| io_err(shown, e))
    }

    fn stat(&mut self, rel: &Rel) -> Result<Vec<u8>, String> {
        let shown = rel.shown;
        let root = self.open_root()?;
        let st = match rel.leaf() {
            None => rfs::fstat(&root).map_err(|e| io_err(shown, e))?,
            Some(leaf) => {
                let dir = self
                    .open_dirs(&root, rel.parents(), false, shown)?
                    .ok_or_else(|| io_err(shown, Errno::NOENT))?;
                let st = rfs::statat(&dir, leaf, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(shown, e))?;
                if kind(&st) != FileType::Directory {
                    check_file(&st, shown)?;
                }
                st
            }
        };
        let kind = if kind(&st) == FileType::Directory {
            "dir"
        } else {
            "file"
        };
        let modified = (st.st_mtime.max(0) as u128) * 1000 + (st.st_mtime_nsec as u128) / 1_000_000;
        Ok(format!(
            "kind={kind} size={} modified_ms={modified}\n",
            st.st_size.max(0)
        )
        .into_bytes())
    }

    fn run(&mut self, operation: &str, args: &Args) -> Result<Vec<u8>, String> {
        match operation.trim() {
            "write" => {
                let rel = self.parse(args.get("path"))?;
                let content = args.get("content").map(String::as_str).unwrap_or("");
                self.write(&rel, content.as_bytes())?;
                Ok(b"ok\n".to_vec())
            }
            "append" => {
                let hold_ms = match args.get("hold_ms").map(|v| v.trim()) {
                    None | Some("") => 0,
                    Some(v) => match v.parse::<u64>() {
                        Ok(ms) if ms <= self.max_hold_ms => ms,
                        _ => {
                            return Err(format!(
                                "seed.fs: hold_ms must be a whole number of at most {}",
                                self.max_hold_ms
                            ))
                        }
                    },
                };
                let rel = self.parse(args.get("path"))?;
                let content = args.get("content").map(String::as_str).unwrap_or("");
                self.append(&rel, content.as_bytes())?;
                // The effect is done; holding the answer back leaves a window in which the
                // Ghost can be stopped between the effect and its event (crash tests).
                if hold_ms > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(hold_ms));
                }
                Ok(b"ok\n".to_vec())
            }
            "read" => {
                let rel = self.parse(args.get("path"))?;
                self.read(&rel)
            }
            "delete" => {
                let rel = self.parse(args.get("path"))?;
                self.delete(&rel)?;
                Ok(b"ok\n".to_vec())
            }
            "list" => {
                let prefix = args.get("prefix").map(|p| p.trim()).unwrap_or("");
                let files = self.list(prefix)?;
                let mut out = files.join("\n");
                out.push('\n');
                Ok(out.into_bytes())
            }
            "stat" => {
                let rel = self.parse(args.get("path"))?;
                self.stat(&rel)
            }
            other => Err(format!("seed.fs: unknown action={other:?}")),
        }
    }
}

static OPS: &[OperationSpec] = &[
    OperationSpec::new("write", "Write content to path (parents created)")
        .args(&["path", "content"])
        .required(&["path"]),
    // Not idempotent: running it twice appends twice, so a Ghost that restarted while it
    // ran does not run it again (the dispatcher's start marker).
    OperationSpec::new(
        "append",
        "Append content to path (parents created); hold_ms delays the answer after the write",
    )
    .args(&["path", "content", "hold_ms"])
    .required(&["path"])
    .mutating(),
    OperationSpec::new("read", "Read a file")
        .args(&["path"])
        .required(&["path"]),
    OperationSpec::new("delete", "Delete a file (missing is fine)")
        .args(&["path"])
        .required(&["path"]),
    OperationSpec::new("list", "List files, optionally by prefix").args(&["prefix"]),
    OperationSpec::new("stat", "Kind, size and modification time")
        .args(&["path"])
        .required(&["path"]),
];

impl Seed for Fs {
    fn id(&self) -> &'static str {
        "seed.fs"
    }
    fn name(&self) -> &'static str {
        "Filesystem"
    }
    fn description(&self) -> String {
        format!("File persistence seed scoped to {}", self.root.display())
    }
    fn operations(&self) -> &'static [OperationSpec] {
        OPS
    }

    fn execute(&mut self, operation: &str, args: &Args) -> SeedOutput {
        match self.run(operation, args) {
            Ok(out) => SeedOutput::ok(out),
            Err(e) => SeedOutput::error(1, format!("{e}\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(kv: &[(&str, &str)]) -> Args {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ghost-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn write_read_list_stat_delete() {
        let root = tmp("ok");
        let mut fs = Fs::new(root.clone(), 16);
        assert!(fs
            .execute("write", &a(&[("path", "d/x.txt"), ("content", "hello")]))
            .succeeded());
        assert_eq!(
            fs.execute("read", &a(&[("path", "d/x.txt")])).stdout,
            b"hello"
        );
        assert_eq!(fs.execute("list", &Args::new()).stdout, b"d/x.txt\n");
        let st = fs.execute("stat", &a(&[("path", "d/x.txt")]));
        assert!(String::from_utf8_lossy(&st.stdout).contains("size=5"));
        assert!(!fs
            .execute(
                "write",
                &a(&[("path", "big"), ("content", &"x".repeat(17))])
            )
            .succeeded());
        assert!(fs.execute("delete", &a(&[("path", "d/x.txt")])).succeeded());
        assert!(fs.execute("delete", &a(&[("path", "d/x.txt")])).succeeded());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn append_adds_each_time_and_is_bounded() {
        let root = tmp("append");
        let mut fs = Fs::new(root.clone(), 8).with_max_hold_ms(5);
        for _ in 0..2 {
            assert!(fs
                .execute("append", &a(&[("path", "log/n"), ("content", "ab\n")]))
                .succeeded());
        }
        assert_eq!(
            fs.execute("read", &a(&[("path", "log/n")])).stdout,
            b"ab\nab\n"
        );
        assert!(
            !fs.execute("append", &a(&[("path", "log/n"), ("content", "abc")]))
                .succeeded(),
            "the size limit covers what is already there"
        );
        assert!(fs
            .execute("append", &a(&[("path", "h"), ("hold_ms", "5")]))
            .succeeded());
        let out = fs.execute("append", &a(&[("path", "h"), ("hold_ms", "6")]));
        assert!(String::from_utf8_lossy(&out.stderr).contains("hold_ms"));
        assert!(!fs.execute("append", &a(&[("path", "../x")])).succeeded());
        assert!(!fs.operation("append").unwrap().idempotent);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn refuses_escapes() {
        let root = tmp("esc");
        let outside = tmp("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        let mut fs = Fs::new(root.clone(), 1024);
        std::fs::create_dir_all(root.join("inner")).unwrap();
        std::fs::write(root.join("inner/f"), "in").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("file-link")).unwrap();
        std::os::unix::fs::symlink(outside.join("none"), root.join("dangling")).unwrap();
        // Links are refused even when they stay inside the root: none is ever followed.
        std::os::unix::fs::symlink(root.join("inner"), root.join("in-link")).unwrap();
        for (op, path) in [
            ("read", "../x"),
            ("write", "../x"),
            ("read", "/etc/passwd"),
            ("write", "a/../../x"),
            ("read", "link/secret"),
            ("write", "link/new"),
            ("append", "link/new"),
            ("read", "file-link"),
            ("write", "file-link"),
            ("append", "file-link"),
            ("stat", "file-link"),
            ("delete", "file-link"),
            ("append", "dangling"),
            ("write", "dangling"),
            ("read", "in-link/f"),
            ("write", "in-link/f"),
        ] {
            let out = fs.execute(op, &a(&[("path", path), ("content", "x")]));
            assert!(!out.succeeded(), "{op} {path} must be refused");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("escapes root") || err.contains("absolute"),
                "{op} {path}: {err}"
            );
        }
        assert!(!outside.join("new").exists());
        assert!(!outside.join("none").exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "s"
        );
        assert!(
            root.join("file-link").symlink_metadata().is_ok(),
            "not deleted"
        );
        let _ = std::fs::remove_dir_all(root);
        let _ = std::fs::remove_dir_all(outside);
    }

    #[test]
    fn refuses_hard_links_for_every_operation() {
        let root = tmp("hard");
        let outside = tmp("hard-outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::fs::hard_link(outside.join("secret"), root.join("hl")).unwrap();
        let mut fs = Fs::new(root.clone(), 1024);
        for op in ["read", "write", "append", "delete", "stat"] {
            let out = fs.execute(op, &a(&[("path", "hl"), ("content", "x")]));
            assert!(!out.succeeded(), "{op} through a hard link must be refused");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("2 hard links"), "{op}: {err}");
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "s"
        );
        assert!(root.join("hl").exists(), "delete refused too");
        assert_eq!(fs.execute("list", &Args::new()).stdout, b"hl\n");
        let _ = std::fs::remove_dir_all(root);
        let _ = std::fs::remove_dir_all(outside);
    }

    /// The check-then-open race: another thread flips `flip` between a regular file, a
    /// symlink to an outside file and a hard link to it (and `d` between a directory and a
    /// symlink to an outside directory) while the seed writes and appends through them.
    /// The outside files must never change.
    #[test]
    fn a_path_flipped_under_the_seed_never_reaches_outside() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let root = tmp("race");
        let outside = tmp("race-outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("secret"), "outside").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flips = Arc::new(AtomicU64::new(0));
        let flipper = {
            let (root, outside, stop, flips) =
                (root.clone(), outside.clone(), stop.clone(), flips.clone());
            std::thread::spawn(move || {
                let f = root.join("flip");
                let d = root.join("d");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::remove_file(&f);
                    match n % 3 {
                        0 => {
                            let _ = std::fs::write(&f, "inside");
                        }
                        1 => {
                            let _ = std::os::unix::fs::symlink(outside.join("secret"), &f);
                        }
                        _ => {
                            let _ = std::fs::hard_link(outside.join("secret"), &f);
                        }
                    }
                    if n.is_multiple_of(2) {
                        let _ = std::fs::remove_file(&d);
                        let _ = std::fs::create_dir(&d);
                    } else {
                        let _ = std::fs::remove_dir_all(&d);
                        let _ = std::os::unix::fs::symlink(outside.join("dir"), &d);
                    }
                    n += 1;
                    flips.store(n, Ordering::Relaxed);
                }
            })
        };
        let mut fs = Fs::new(root.clone(), 1 << 20);
        let mut ok = 0;
        let iterations = 2000;
        for i in 0..iterations {
            let (op, path) = match i % 4 {
                0 => ("write", "flip"),
                1 => ("append", "flip"),
                2 => ("write", "d/f"),
                _ => ("append", "d/g"),
            };
            if fs
                .execute(op, &a(&[("path", path), ("content", "PWNED\n")]))
                .succeeded()
            {
                ok += 1;
            }
            assert_eq!(
                std::fs::read_to_string(outside.join("secret")).unwrap(),
                "outside",
                "outside file modified at iteration {i}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        assert_eq!(
            std::fs::read_dir(outside.join("dir")).unwrap().count(),
            0,
            "nothing created in the outside directory"
        );
        let flipped = flips.load(Ordering::Relaxed);
        println!("{iterations} operations, {ok} succeeded, {flipped} flips");
        assert!(flipped > 100, "the flipper ran alongside ({flipped} flips)");
        assert!(ok > 0, "some operations hit the regular file");
        let _ = std::fs::remove_dir_all(root);
        let _ = std::fs::remove_dir_all(outside);
    }

    #[test]
    fn quota_counts_the_whole_root() {
        let root = tmp("quota");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/existing"), "12345").unwrap(); // written by someone else
        let mut fs = Fs::new(root.clone(), 100).with_max_total_bytes(20);
        assert!(fs
            .execute("write", &a(&[("path", "a"), ("content", "0123456789")]))
            .succeeded());
        let out = fs.execute("write", &a(&[("path", "b"), ("content", "0123456")]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("fs_max_total_bytes = 20"), "{err}");
        assert!(!root.join("b").exists());
        // Replacing a file counts only the difference; shrinking is always allowed.
        assert!(fs
            .execute("write", &a(&[("path", "a"), ("content", "01234567890123")]))
            .succeeded());
        assert!(!fs
            .execute("append", &a(&[("path", "a"), ("content", "xx")]))
            .succeeded());
        assert!(fs.execute("delete", &a(&[("path", "a")])).succeeded());
        assert!(fs
            .execute("append", &a(&[("path", "c"), ("content", "0123456789")]))
            .succeeded());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn write_replaces_whole_and_stale_temp_files_are_swept() {
        let root = tmp("tmpfiles");
        std::fs::create_dir_all(&root).unwrap();
        // A temp file left by a process killed mid-write (no such pid), and one of a live
        // writer (pid 1 always runs), which is not ours to remove.
        std::fs::write(root.join(format!("{TMP_PREFIX}4194304999.1")), "half").unwrap();
        std::fs::write(root.join(format!("{TMP_PREFIX}1.1")), "live").unwrap();
        let mut fs = Fs::new(root.clone(), 100).with_max_total_bytes(1000);
        assert!(fs
            .execute("write", &a(&[("path", "f"), ("content", "old")]))
            .succeeded());
        std::fs::set_permissions(
            root.join("f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert!(fs
            .execute("write", &a(&[("path", "f"), ("content", "new")]))
            .succeeded());
        assert_eq!(std::fs::read_to_string(root.join("f")).unwrap(), "new");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(root.join("f")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the replaced file keeps its mode");
        let names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(
            names,
            vec![format!("{TMP_PREFIX}1.1"), "f".to_string()],
            "the stale temp file is gone, the live writer's kept, ours never left behind"
        );
        let _ = std::fs::remove_dir_all(root);
    }
}
