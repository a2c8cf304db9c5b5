//! `storage.move` on the Ghost side (issue 14): seed.redis's `snapshot`, `serve`, `restore`
//! and `verify`. The bytes go Ghost → Ghost over one TCP connection on 127.0.0.1, never
//! through Mirage:
//!
//! - `snapshot` BGSAVEs the source instance, hard-links its `dump.rdb` under
//!   `<redis_dir>/.moves/<move>.rdb` (a later BGSAVE renames a new file over `dump.rdb`; the
//!   link keeps this one), and records size, sha256 and the key count read from the RDB's
//!   RESIZEDB header (exact for that snapshot, unlike a DBSIZE racing writers).
//! - `serve` listens on the given 127.0.0.1 port for one fetch: the request names the move,
//!   the fetching Ghost and a one-time token; only the Ghost named in the move with that
//!   token gets the bytes. The token is spent by the first fetch that presents it, and the
//!   offer expires after `ttl`; three bad requests end it.
//! - `restore` fetches into `<name>.incoming/`, hashing while it streams (bounded buffer),
//!   compares with the source's sha256, installs the RDB as the base of a fresh append-only
//!   dataset, starts the instance on seed.redis's supervision and compares DBSIZE with the
//!   key count. Only then is the instance marked verified; any failure stops it and removes
//!   everything restore created. A Ghost restarted mid-restore removes leftovers at start.
//!
//! The source is only read: it is never stopped or written to by a move.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::SeedCtx;

/// The request line and header line are at most this long.
pub const MAX_LINE: usize = 512;
/// Streaming buffer: memory per transfer is this, whatever the dataset size.
pub const CHUNK: usize = 256 * 1024;
/// Largest dataset a move accepts.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// A peer silent this long fails the transfer.
pub const IDLE: Duration = Duration::from_secs(10);
/// Progress observations at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Bad requests an offer tolerates before it closes.
const MAX_BAD: u32 = 3;
/// Marker files in a restored instance dir.
pub const PENDING: &str = "MOVE.pending";
pub const VERIFIED: &str = "MOVE.verified";
/// Where restored data goes: redis's multi-part AOF with the RDB as its base.
const AOF_DIR: &str = "appendonlydir";
const BASE: &str = "appendonly.aof.1.base.rdb";
const AOF_MANIFEST: &str = "appendonly.aof.manifest";

/// What a snapshot is: recorded by `snapshot`, read by `serve`, sent to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub move_id: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub keys: u64,
    /// The instance's port (a pending target's, so a restarted Ghost can stop it).
    #[serde(default)]
    pub port: u16,
}

pub fn valid_move_id(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 128
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn valid_token(t: &str) -> bool {
    (16..=128).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub fn moves_dir(redis_dir: &Path) -> PathBuf {
    redis_dir.join(".moves")
}

pub fn incoming_dir(redis_dir: &Path, name: &str) -> PathBuf {
    redis_dir.join(format!("{name}.incoming"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `MOVE1 <move> <ghost> <token>`
pub fn request_line(move_id: &str, ghost: &str, token: &str) -> String {
    format!("MOVE1 {move_id} {ghost} {token}\n")
}

pub fn parse_request(line: &str) -> Result<(String, String, String), String> {
    let p: Vec<&str> = line.trim_end().split(' ').collect();
    match p.as_slice() {
        ["MOVE1", m, g, t] if valid_move_id(m) && !g.is_empty() && g.len() <= 128 => {
            Ok(((*m).to_owned(), (*g).to_owned(), (*t).to_owned()))
        }
        _ => Err("not a MOVE1 request".into()),
    }
}

/// `OK <size> <sha256> <keys>`
pub fn header_line(m: &Manifest) -> String {
    format!("OK {} {} {}\n", m.size, m.sha256, m.keys)
}

pub fn parse_header(line: &str) -> Result<(u64, String, u64), String> {
    let line = line.trim_end();
    if let Some(why) = line.strip_prefix("ERR ") {
        return Err(format!("the source refused: {why}"));
    }
    let p: Vec<&str> = line.split(' ').collect();
    match p.as_slice() {
        ["OK", size, sha, keys]
            if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            let size: u64 = size.parse().map_err(|_| format!("bad size {size:?}"))?;
            if size > MAX_BYTES {
                return Err(format!("dataset of {size} bytes exceeds {MAX_BYTES}"));
            }
            let keys = keys
                .parse()
                .map_err(|_| format!("bad key count {keys:?}"))?;
            Ok((size, (*sha).to_ascii_lowercase(), keys))
        }
        _ => Err(format!(
            "not a MOVE1 header: {:?}",
            line.chars().take(80).collect::<String>()
        )),
    }
}

/// Reads one `\n`-ended line of at most MAX_LINE bytes.
fn read_line(r: &mut impl BufRead) -> Result<String, String> {
    let mut buf = Vec::new();
    let n = r
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return Err(format!("no line within {MAX_LINE} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "line is not UTF-8".into())
}

// ---- RDB key count ----

struct Rdb<'a> {
    b: &'a [u8],
    i: usize,
}

impl Rdb<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.i).ok_or("RDB header cut short")?;
        self.i += 1;
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.i.checked_add(n).ok_or("RDB length overflow")?;
        let s = self.b.get(self.i..end).ok_or("RDB header cut short")?;
        self.i = end;
        Ok(s)
    }

    /// A length, or `Err(enc)` for a special string encoding.
    fn length(&mut self) -> Result<Result<u64, u8>, String> {
        let b = self.byte()?;
        Ok(match b >> 6 {
            0 => Ok(u64::from(b & 0x3f)),
            1 => Ok(u64::from(b & 0x3f) << 8 | u64::from(self.byte()?)),
            2 if b == 0x80 => {
                let s = self.take(4)?;
                Ok(u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]])))
            }
            2 if b == 0x81 => {
                let s = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                Ok(u64::from_be_bytes(a))
            }
            3 => Err(b & 0x3f),
            _ => return Err(format!("RDB: bad length byte {b:#x}")),
        })
    }

    fn plain_length(&mut self) -> Result<u64, String> {
        self.length()?
            .map_err(|_| "RDB: encoded value where a length belongs".to_owned())
    }

    fn skip_string(&mut self) -> Result<(), String> {
        let n = match self.length()? {
            Ok(n) => n,
            Err(0) => 1,
            Err(1) => 2,
            Err(2) => 4,
            Err(3) => {
                let clen = self.plain_length()?;
                let _ulen = self.plain_length()?;
                clen
            }
            Err(e) => return Err(format!("RDB: unknown string encoding {e}")),
        };
        self.take(usize::try_from(n).map_err(|_| "RDB: string too long")?)?;
        Ok(())
    }
}

/// Keys of database 0 in an RDB, from its RESIZEDB record (written by every redis ≥ 3.2 for
/// each non-empty database). Reads only the head of the file.
pub fn rdb_key_count(head: &[u8]) -> Result<u64, String> {
    if head.len() < 9 || &head[..5] != b"REDIS" {
        return Err("not an RDB file".into());
    }
    let mut r = Rdb { b: head, i: 9 };
    loop {
        match r.byte()? {
            0xFA => {
                r.skip_string()?;
                r.skip_string()?;
            }
            // Functions (redis 7): a library's code as one string.
            0xF5 => r.skip_string()?,
            0xFE => {
                let db = r.plain_length()?;
                if db != 0 {
                    return Ok(0); // databases are written in order: no db 0
                }
                if r.byte()? != 0xFB {
                    return Err("RDB: database 0 has no RESIZEDB record".into());
                }
                return r.plain_length();
            }
            0xFF => return Ok(0),
            op => {
                return Err(format!(
                    "RDB: cannot read the key count past opcode {op:#x}"
                ))
            }
        }
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(p: &Path) -> Result<(u64, String), String> {
    let mut f = std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?;
    let mut h = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", p.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex(&h.finish())))
}

pub fn read_head(p: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?;
    let mut head = Vec::new();
    f.take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(|e| format!("read {}: {e}", p.display()))?;
    Ok(head)
}

pub fn write_json(p: &Path, v: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_vec(v).map_err(|e| format!("encode: {e}"))?;
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, p).map_err(|e| format!("rename {}: {e}", p.display()))
}

pub fn read_manifest(p: &Path) -> Result<Manifest, String> {
    let text = std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", p.display()))
}

fn rate_mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-6)
}

fn progress(
    ctx: &SeedCtx,
    move_id: &str,
    role: &str,
    state: &str,
    bytes: u64,
    total: u64,
    t0: Instant,
) {
    let st = [
        ("instance", format!("move.{move_id}")),
        ("role", role.to_owned()),
        ("state", state.to_owned()),
        ("bytes", bytes.to_string()),
        ("total", total.to_string()),
        (
            "rate_mb_s",
            format!("{:.1}", rate_mb_s(bytes, t0.elapsed())),
        ),
    ];
    // Best effort: a newer observation supersedes a dropped one.
    let _ = ctx.observe(
        st.iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    );
}

// ---- serve ----

/// One offer: the snapshot, who may fetch it, with what token, until when.
pub struct Offer {
    pub manifest: Manifest,
    pub file: PathBuf,
    pub for_ghost: String,
    pub token: String,
    pub deadline: Instant,
}

/// Binds 127.0.0.1:port now (so the operation reports a busy port) and serves one fetch on
/// its own thread. `done` is called when the offer ends (served, expired or refused).
pub fn serve(
    port: u16,
    offer: Offer,
    ctx: SeedCtx,
    done: impl FnOnce() + Send + 'static,
) -> Result<SocketAddr, String> {
    let l = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("listen 127.0.0.1:{port}: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("listen 127.0.0.1:{port}: {e}"))?;
    let addr = l.local_addr().map_err(|e| format!("listen: {e}"))?;
    std::thread::Builder::new()
        .name(format!("move-serve-{}", offer.manifest.move_id))
        .spawn(move || {
            let mut bad = 0;
            let mut result = "expired".to_owned();
            while Instant::now() < offer.deadline && bad < MAX_BAD {
                match l.accept() {
                    Ok((s, peer)) => match serve_one(s, &offer, &ctx) {
                        Ok(n) => {
                            result = format!("served {n} bytes to {peer}");
                            break;
                        }
                        Err((spent, e)) => {
                            tracing::warn!(component = "ghost.move", move_id = %offer.manifest.move_id, %peer, error = %e, "fetch failed");
                            if spent {
                                result = format!("fetch by {peer} failed: {e}");
                                break;
                            }
                            bad += 1;
                            result = format!("refused {bad} request(s)");
                        }
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        result = format!("accept: {e}");
                        break;
                    }
                }
            }
            tracing::info!(component = "ghost.move", move_id = %offer.manifest.move_id, result = %result, "offer ended");
            done();
        })
        .map_err(|e| format!("spawn: {e}"))?;
    Ok(addr)
}

/// Err((token spent, why)).
fn serve_one(s: TcpStream, o: &Offer, ctx: &SeedCtx) -> Result<u64, (bool, String)> {
    let io = |e: std::io::Error| (true, format!("send: {e}"));
    s.set_nonblocking(false)
        .map_err(|e| (false, e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| (false, e.to_string()))?;
    s.set_write_timeout(Some(IDLE))
        .map_err(|e| (false, e.to_string()))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| (false, e.to_string()))?);
    let mut w = s;
    let line = read_line(&mut r).map_err(|e| (false, e))?;
    let refuse = |w: &mut TcpStream, why: &str| {
        let _ = w.write_all(format!("ERR {why}\n").as_bytes());
        Err((false, why.to_owned()))
    };
    let (m, g, t) = match parse_request(&line) {
        Ok(x) => x,
        Err(e) => return refuse(&mut w, &e),
    };
    let token_ok =
        t.len() == o.token.len() && openssl::memcmp::eq(t.as_bytes(), o.token.as_bytes());
    if m != o.manifest.move_id || g != o.for_ghost || !token_ok {
        return refuse(&mut w, "not this move's Ghost and token");
    }
    // From here the token is spent: a second fetch with it is refused.
    let mut f = std::fs::File::open(&o.file).map_err(|e| (true, format!("open snapshot: {e}")))?;
    w.write_all(header_line(&o.manifest).as_bytes())
        .map_err(io)?;
    let (mut sent, t0, mut last) = (0u64, Instant::now(), Instant::now());
    let mut buf = vec![0u8; CHUNK];
    while sent < o.manifest.size {
        let want = (o.manifest.size - sent).min(CHUNK as u64) as usize;
        let k = f
            .read(&mut buf[..want])
            .map_err(|e| (true, format!("read snapshot: {e}")))?;
        if k == 0 {
            return Err((true, "snapshot shorter than its manifest".into()));
        }
        w.write_all(&buf[..k]).map_err(io)?;
        sent += k as u64;
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            progress(
                ctx,
                &o.manifest.move_id,
                "source",
                "serving",
                sent,
                o.manifest.size,
                t0,
            );
        }
    }
    w.flush().map_err(io)?;
    progress(
        ctx,
        &o.manifest.move_id,
        "source",
        "served",
        sent,
        o.manifest.size,
        t0,
    );
    Ok(sent)
}

// ---- fetch ----

#[derive(Debug)]
pub struct Fetched {
    pub size: u64,
    pub sha256: String,
    pub keys: u64,
    pub elapsed: Duration,
}

/// Fetches a move's snapshot from `from` into `dir/appendonlydir` as the base of a fresh
/// append-only dataset; the sha256 is computed while streaming and must equal the source's.
pub fn fetch(
    from: &str,
    move_id: &str,
    ghost: &str,
    token: &str,
    dir: &Path,
    ctx: &SeedCtx,
) -> Result<Fetched, String> {
    let addr: SocketAddr = from
        .parse()
        .map_err(|_| format!("argument from {from:?} must be IP:PORT"))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(IDLE)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IDLE)).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    w.write_all(request_line(move_id, ghost, token).as_bytes())
        .map_err(|e| format!("send request: {e}"))?;
    let mut r = BufReader::with_capacity(CHUNK, s);
    let (size, want_sha, keys) = parse_header(&read_line(&mut r)?)?;
    let aof = dir.join(AOF_DIR);
    std::fs::create_dir_all(&aof).map_err(|e| format!("create {}: {e}", aof.display()))?;
    let part = aof.join(format!("{BASE}.part"));
    let mut f =
        std::fs::File::create(&part).map_err(|e| format!("create {}: {e}", part.display()))?;
    let mut h = openssl::sha::Sha256::new();
    let (mut got, t0, mut last) = (0u64, Instant::now(), Instant::now());
    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::new();
    while got < size {
        let want = (size - got).min(CHUNK as u64) as usize;
        let k = r
            .read(&mut buf[..want])
            .map_err(|e| format!("receive after {got} of {size} bytes: {e}"))?;
        if k == 0 {
            return Err(format!("the source closed after {got} of {size} bytes"));
        }
        h.update(&buf[..k]);
        if head.len() < 64 * 1024 {
            head.extend_from_slice(&buf[..k.min(64 * 1024 - head.len())]);
        }
        f.write_all(&buf[..k])
            .map_err(|e| format!("write {}: {e}", part.display()))?;
        got += k as u64;
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            progress(ctx, move_id, "target", "transferring", got, size, t0);
        }
    }
    f.sync_all()
        .map_err(|e| format!("sync {}: {e}", part.display()))?;
    let elapsed = t0.elapsed();
    let sha = hex(&h.finish());
    if sha != want_sha {
        progress(ctx, move_id, "target", "failed", got, size, t0);
        return Err(format!(
            "sha256 mismatch: received {sha}, the source's snapshot is {want_sha} ({got} bytes)"
        ));
    }
    // The header's key count must agree with the bytes' own RESIZEDB record.
    if let Ok(n) = rdb_key_count(&head) {
        if n != keys {
            return Err(format!("the RDB holds {n} keys, the source said {keys}"));
        }
    }
    std::fs::rename(&part, aof.join(BASE)).map_err(|e| format!("install: {e}"))?;
    std::fs::write(
        aof.join(AOF_MANIFEST),
        format!("file {BASE} seq 1 type b\n"),
    )
    .map_err(|e| format!("write the AOF manifest: {e}"))?;
    progress(ctx, move_id, "target", "received", got, size, t0);
    Ok(Fetched {
        size,
        sha256: sha,
        keys,
        elapsed,
    })
}

pub fn summary(f: &Fetched) -> String {
    format!(
        "{} bytes in {} ms ({:.1} MB/s), sha256={} verified, keys={}",
        f.size,
        f.elapsed.as_millis(),
        rate_mb_s(f.size, f.elapsed),
        f.sha256,
        f.keys
    )
}

/// Best effort `SHUTDOWN NOSAVE` to 127.0.0.1:port, bounded by 2 s.
fn shutdown_nosave(port: u16) {
    if port == 0 {
        return;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n");
        let mut b = [0u8; 64];
        let _ = s.read(&mut b); // closed by the server once it has stopped
    }
}

/// At seed start: what a restore left half done (a Ghost killed mid-move) is removed, so a
/// half-restored instance is never started or advertised; and the snapshots of offers the
/// last run made (offers live in memory: a restarted source has none, so their hard links
/// would only hold disk).
pub fn clean_leftovers(redis_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(rd) = std::fs::read_dir(moves_dir(redis_dir)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if std::fs::remove_file(e.path()).is_ok() {
                removed.push(format!(".moves/{name}"));
            }
        }
    }
    let Ok(rd) = std::fs::read_dir(redis_dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let pending = p.join(PENDING);
        if pending.exists() {
            // The killed Ghost's redis-server outlives it: stop it before its data goes.
            if let Ok(m) = read_manifest(&pending) {
                shutdown_nosave(m.port);
            }
        }
        if (name.ends_with(".incoming") || pending.exists()) && std::fs::remove_dir_all(&p).is_ok()
        {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_header_round_trip_and_refuse_junk() {
        let l = request_line("mv-1", "ghost.2", "abcdefabcdefabcdef");
        assert_eq!(
            parse_request(&l).unwrap(),
            ("mv-1".into(), "ghost.2".into(), "abcdefabcdefabcdef".into())
        );
        assert!(parse_request("GET / HTTP/1.1\r\n").is_err());
        assert!(parse_request("MOVE1 a/b g t\n").is_err());
        let m = Manifest {
            move_id: "m".into(),
            name: "cache".into(),
            size: 42,
            sha256: "ab".repeat(32),
            keys: 7,
            port: 0,
        };
        assert_eq!(
            parse_header(&header_line(&m)).unwrap(),
            (42, "ab".repeat(32), 7)
        );
        assert!(parse_header("ERR no\n")
            .unwrap_err()
            .contains("refused: no"));
        assert!(parse_header(&format!("OK {} {} 1\n", u64::MAX, "ab".repeat(32))).is_err());
        assert!(parse_header("OK 1 xyz 1\n").is_err());
    }

    #[test]
    fn key_count_comes_from_resizedb() {
        // REDIS0010, aux redis-ver "7.0.15", aux an int-encoded value, SELECTDB 0,
        // RESIZEDB 100000 (0x80 + u32) 0.
        let mut b = b"REDIS0010".to_vec();
        b.extend([0xFA, 9]);
        b.extend(b"redis-ver");
        b.extend([6]);
        b.extend(b"7.0.15");
        b.extend([0xFA, 5]);
        b.extend(b"ctime");
        b.extend([0xC2, 1, 2, 3, 4]);
        b.extend([0xFE, 0, 0xFB, 0x80, 0, 1, 0x86, 0xA0, 0]);
        assert_eq!(rdb_key_count(&b).unwrap(), 100_000);
        let mut small = b"REDIS0010".to_vec();
        small.extend([0xFE, 0, 0xFB, 0x41, 0x00, 0]);
        assert_eq!(rdb_key_count(&small).unwrap(), 256);
        let mut empty = b"REDIS0010".to_vec();
        empty.push(0xFF);
        assert_eq!(rdb_key_count(&empty).unwrap(), 0);
        assert!(rdb_key_count(b"REDIS0010\xFA").is_err());
        assert!(rdb_key_count(b"NOTRDB").is_err());
    }

    #[test]
    fn ids_and_tokens_are_plain() {
        assert!(valid_move_id("move-1.a_b"));
        assert!(!valid_move_id("a b") && !valid_move_id(""));
        assert!(valid_token(&"a1".repeat(16)));
        assert!(!valid_token("short") && !valid_token(&"-".repeat(20)));
    }

    fn offer(dir: &Path, token: &str, ttl: Duration) -> (Offer, Vec<u8>) {
        let data: Vec<u8> = (0..700_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let file = dir.join("snap.rdb");
        std::fs::write(&file, &data).unwrap();
        let (size, sha256) = sha256_file(&file).unwrap();
        let manifest = Manifest {
            move_id: "mv-1".into(),
            name: "cache".into(),
            size,
            sha256,
            keys: 0,
            port: 0,
        };
        let o = Offer {
            manifest,
            file,
            for_ghost: "ghost.2".into(),
            token: token.into(),
            deadline: Instant::now() + ttl,
        };
        (o, data)
    }

    #[test]
    fn a_restart_removes_half_restores_and_dead_offers_but_not_instances() {
        let dir = std::env::temp_dir().join(format!("ghost-move-clean-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let moves = moves_dir(&dir);
        std::fs::create_dir_all(&moves).unwrap();
        std::fs::write(moves.join("mv-0.rdb"), b"REDIS").unwrap();
        std::fs::write(moves.join("mv-0.json"), b"{}").unwrap();
        std::fs::create_dir_all(incoming_dir(&dir, "cache")).unwrap();
        std::fs::create_dir_all(dir.join("kept")).unwrap();
        std::fs::write(dir.join("kept/dump.rdb"), b"REDIS").unwrap();
        let mut removed = clean_leftovers(&dir);
        removed.sort();
        assert_eq!(
            removed,
            [".moves/mv-0.json", ".moves/mv-0.rdb", "cache.incoming"]
        );
        assert!(dir.join("kept/dump.rdb").is_file(), "a live instance stays");
        assert_eq!(std::fs::read_dir(&moves).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_named_ghost_with_the_token_fetches_once_and_offers_expire() {
        let dir = std::env::temp_dir().join(format!("ghost-move-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ctx = SeedCtx::detached("seed.redis");
        let token = "a1b2c3d4e5f6a7b8c9d0";
        let (o, data) = offer(&dir, token, Duration::from_secs(20));
        let (tx, rx) = std::sync::mpsc::channel();
        let addr = serve(0, o, ctx.clone(), move || tx.send(()).unwrap())
            .unwrap()
            .to_string();
        let into = dir.join("in");
        let e = fetch(
            &addr,
            "mv-1",
            "ghost.2",
            "wrongwrongwrongwrong",
            &into,
            &ctx,
        )
        .unwrap_err();
        assert!(e.contains("refused"), "{e}");
        let e = fetch(&addr, "mv-1", "ghost.3", token, &into, &ctx).unwrap_err();
        assert!(e.contains("refused"), "{e}");
        let f = fetch(&addr, "mv-1", "ghost.2", token, &into, &ctx).unwrap();
        assert_eq!(f.size, data.len() as u64);
        assert_eq!(std::fs::read(into.join(AOF_DIR).join(BASE)).unwrap(), data);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // Spent: the offer is gone.
        assert!(fetch(&addr, "mv-1", "ghost.2", token, &dir.join("again"), &ctx).is_err());
        // Expired: nothing is served after the ttl.
        let (o, _) = offer(&dir, token, Duration::from_millis(100));
        let addr = serve(0, o, ctx.clone(), || {}).unwrap().to_string();
        std::thread::sleep(Duration::from_millis(400));
        assert!(fetch(&addr, "mv-1", "ghost.2", token, &dir.join("late"), &ctx).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
