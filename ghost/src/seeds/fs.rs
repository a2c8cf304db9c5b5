//! `seed.fs`: files under one root. Refuses absolute paths, `..` components and anything whose
//! resolved location (symlinks followed) leaves the root; file sizes are bounded.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use shared::envelope::Args;

use super::{OperationSpec, Seed, SeedOutput};

const MAX_LIST: usize = 10_000;

pub struct Fs {
    root: PathBuf,
    max_bytes: u64,
    max_hold_ms: u64,
}

impl Fs {
    pub fn new(root: PathBuf, max_bytes: u64) -> Fs {
        Fs {
            root,
            max_bytes,
            max_hold_ms: 60_000,
        }
    }

    /// Bound for `append`'s `hold_ms` (the Ghost passes `seed.flow_max_sleep_ms`).
    pub fn with_max_hold_ms(mut self, ms: u64) -> Fs {
        self.max_hold_ms = ms;
        self
    }

    fn root_canon(&self) -> Result<PathBuf, String> {
        std::fs::create_dir_all(&self.root)
            .and_then(|_| self.root.canonicalize())
            .map_err(|e| format!("seed.fs: root {}: {e}", self.root.display()))
    }

    /// Resolves `path` inside the root, or says why not.
    fn resolve(&self, path: Option<&String>) -> Result<PathBuf, String> {
        let p = path.map(|p| p.trim()).unwrap_or("");
        if p.is_empty() {
            return Err("seed.fs: missing path".into());
        }
        let rel = Path::new(p);
        if rel.is_absolute() {
            return Err("seed.fs: absolute path not allowed".into());
        }
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err("seed.fs: path escapes root".into());
        }
        let root = self.root_canon()?;
        let full = root.join(rel);
        // The deepest part that exists, symlinks followed, must still be inside the root.
        let mut probe = full.as_path();
        loop {
            if probe.symlink_metadata().is_ok() {
                let real = probe
                    .canonicalize()
                    .map_err(|_| "seed.fs: path escapes root (dangling link)".to_string())?;
                if !real.starts_with(&root) {
                    return Err("seed.fs: path escapes root (symlink)".into());
                }
                break;
            }
            match probe.parent() {
                Some(parent) => probe = parent,
                None => break,
            }
        }
        Ok(full)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        let root = self.root_canon()?;
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let path = e.path();
                // Never follow links while walking.
                let Ok(md) = path.symlink_metadata() else {
                    continue;
                };
                if md.is_dir() {
                    stack.push(path);
                } else if md.is_file() {
                    if let Ok(rel) = path.strip_prefix(&root) {
                        let s = rel.to_string_lossy().replace('\\', "/");
                        if s.starts_with(prefix) {
                            out.push(s);
                        }
                    }
                }
                if out.len() > MAX_LIST {
                    return Err(format!(
                        "seed.fs: more than {MAX_LIST} files match; narrow the prefix"
                    ));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn run(&mut self, operation: &str, args: &Args) -> Result<Vec<u8>, String> {
        match operation.trim() {
            "write" => {
                let full = self.resolve(args.get("path"))?;
                let content = args.get("content").map(String::as_str).unwrap_or("");
                if content.len() as u64 > self.max_bytes {
                    return Err(format!(
                        "seed.fs: content of {} bytes exceeds the limit of {}",
                        content.len(),
                        self.max_bytes
                    ));
                }
                if let Some(parent) = full.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("seed.fs: {e}"))?;
                }
                // Re-check after creating parents: a link could have appeared in between.
                let full = self.resolve(args.get("path"))?;
                std::fs::write(&full, content).map_err(|e| format!("seed.fs: {e}"))?;
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
                let full = self.resolve(args.get("path"))?;
                let content = args.get("content").map(String::as_str).unwrap_or("");
                let have = std::fs::metadata(&full).map(|m| m.len()).unwrap_or(0);
                if have.saturating_add(content.len() as u64) > self.max_bytes {
                    return Err(format!(
                        "seed.fs: appending {} bytes to {have} exceeds the limit of {}",
                        content.len(),
                        self.max_bytes
                    ));
                }
                if let Some(parent) = full.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("seed.fs: {e}"))?;
                }
                let full = self.resolve(args.get("path"))?;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&full)
                    .map_err(|e| format!("seed.fs: {e}"))?;
                f.write_all(content.as_bytes())
                    .and_then(|_| f.sync_data())
                    .map_err(|e| format!("seed.fs: {e}"))?;
                // The effect is done; holding the answer back leaves a window in which the
                // Ghost can be stopped between the effect and its event (crash tests).
                if hold_ms > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(hold_ms));
                }
                Ok(b"ok\n".to_vec())
            }
            "read" => {
                let full = self.resolve(args.get("path"))?;
                let f = std::fs::File::open(&full).map_err(|e| format!("seed.fs: {e}"))?;
                let mut buf = Vec::new();
                f.take(self.max_bytes + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("seed.fs: {e}"))?;
                if buf.len() as u64 > self.max_bytes {
                    return Err(format!(
                        "seed.fs: file exceeds the limit of {} bytes",
                        self.max_bytes
                    ));
                }
                Ok(buf)
            }
            "delete" => {
                let full = self.resolve(args.get("path"))?;
                match std::fs::remove_file(&full) {
                    Ok(()) => Ok(b"ok\n".to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(b"ok\n".to_vec()),
                    Err(e) => Err(format!("seed.fs: {e}")),
                }
            }
            "list" => {
                let prefix = args.get("prefix").map(|p| p.trim()).unwrap_or("");
                let files = self.list(prefix)?;
                let mut out = files.join("\n");
                out.push('\n');
                Ok(out.into_bytes())
            }
            "stat" => {
                let full = self.resolve(args.get("path"))?;
                let md = std::fs::metadata(&full).map_err(|e| format!("seed.fs: {e}"))?;
                let kind = if md.is_dir() { "dir" } else { "file" };
                let modified = md
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                Ok(format!("kind={kind} size={} modified_ms={modified}\n", md.len()).into_bytes())
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
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("file-link")).unwrap();
        for (op, path) in [
            ("read", "../x"),
            ("write", "../x"),
            ("read", "/etc/passwd"),
            ("write", "a/../../x"),
            ("read", "link/secret"),
            ("write", "link/new"),
            ("read", "file-link"),
            ("write", "file-link"),
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
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "s"
        );
        let _ = std::fs::remove_dir_all(root);
        let _ = std::fs::remove_dir_all(outside);
    }
}
