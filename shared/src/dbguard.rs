//! Checks a SQLite database's files before SQLite opens them, so a wiped database or a
//! damaged write-ahead log stops the process with the file's name instead of starting empty.
//!
//! SQLite itself starts happily on a zero-length file (an empty database), on a deleted one
//! (a new database) and on a WAL whose header or frames do not check out (it ignores them and
//! resets the WAL at the next write). For Mirage and Ghost that state is what keeps an effect
//! from happening twice, so losing it silently is the worst outcome:
//!
//! - `<db>.created`, a marker written beside the database once its schema exists, tells "first
//!   start" from "the database was wiped": a missing or empty database with the marker present
//!   is refused.
//! - The WAL is read (bounded: one page at a time) and checked the way SQLite recovers it:
//!   header magic, version and checksum, then the frames of the current generation (matching
//!   salts) with their running checksum. A bad header, a bad frame followed by more frames of
//!   the same generation, or fewer readable commits than SQLite's own index (`-shm`, left
//!   behind by a crash) recorded, is corruption: refused, naming the WAL.
//! - A missing WAL while the `-shm` index says it held commits not yet copied back is logged
//!   (the caller gets a warning): those commits are gone.
//!
//! No SQLite dependency: the formats are SQLite's documented file formats.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
const WAL_MAGIC: u32 = 0x377f_0682;
const WAL_VERSION: u32 = 3_007_000;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// What the check found, for the caller to log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// No database and no marker: a first start.
    pub fresh: bool,
    /// Things worth an operator's attention that do not stop the start.
    pub warnings: Vec<String>,
}

pub fn marker_path(db: &Path) -> PathBuf {
    with_suffix(db, ".created")
}

fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn len_of(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// Checks `db` (and its `-wal`, `-shm`) before it is opened. `holds` says what the database
/// keeps, for the message (e.g. "the outbox, the dedupe window, start markers and fences").
pub fn check(db: &Path, holds: &str) -> Result<Checked, String> {
    let marker = marker_path(db);
    let wal = with_suffix(db, "-wal");
    let shm = with_suffix(db, "-shm");
    let db_len = len_of(db);
    let wal_len = len_of(&wal).unwrap_or(0);
    let mut out = Checked::default();
    if db_len.unwrap_or(0) == 0 {
        let state = if db_len.is_none() {
            "is missing"
        } else {
            "is empty (0 bytes)"
        };
        // What to remove for a deliberate fresh start: whatever of these is there.
        let leftovers = [&marker, &wal, &shm]
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ");
        let evidence = if marker.exists() {
            Some(format!("{} says it was created", marker.display()))
        } else if wal_len > 0 {
            Some(format!(
                "its write-ahead log {} holds {wal_len} bytes",
                wal.display()
            ))
        } else {
            None
        };
        if let Some(evidence) = evidence {
            return Err(format!(
                "{} {state}, but {evidence}: the database was wiped after it was used, and {holds} \
                 would start empty (a command re-sent after a crash could run twice). Restore {} \
                 from a backup; or, to start with an empty database on purpose, remove {leftovers}",
                db.display(),
                db.display(),
            ));
        }
        out.fresh = true;
        return Ok(out);
    }
    let mut head = [0u8; 16];
    let read = File::open(db)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| format!("{}: cannot read its header: {e}", db.display()));
    if read.is_err() || &head != SQLITE_HEADER {
        return Err(format!(
            "{} is not a SQLite database (its first bytes are not the SQLite header): it is \
             corrupt or was overwritten. Restore it from a backup; or, to start with an empty \
             database on purpose, move it and {} aside",
            db.display(),
            marker.display()
        ));
    }
    let index = read_shm(&shm);
    if wal_len == 0 {
        if let Some(ix) = index.filter(|ix| ix.mx_frame > ix.backfilled) {
            out.warnings.push(format!(
                "{} is missing or empty, but {} says it held {} committed frames not yet copied \
                 into {}: those commits are lost, and the state starts from before them",
                wal.display(),
                shm.display(),
                ix.mx_frame - ix.backfilled,
                db.display()
            ));
        }
        return Ok(out);
    }
    let file = File::open(&wal).map_err(|e| format!("{}: cannot read: {e}", wal.display()))?;
    let scan = scan_wal(BufReader::new(file)).map_err(|e| format!("{}: {e}", wal.display()))?;
    // SQLite's index, when a crash left it, knows whether every commit was already copied
    // back: then moving the WAL aside loses nothing, which is worth saying.
    let all_copied = index.is_some_and(|ix| ix.mx_frame <= ix.backfilled);
    let corrupt = |why: String| {
        format!(
            "{} is corrupt ({why}): SQLite would silently drop the commits it holds and start \
             with older state, so {holds} would go back in time. Restore {} with its WAL from a \
             backup; or, to start without those commits on purpose, move {} aside{}",
            wal.display(),
            db.display(),
            wal.display(),
            if all_copied {
                format!(
                    " ({} says every commit was already copied into {}, so nothing would be lost)",
                    shm.display(),
                    db.display()
                )
            } else {
                String::new()
            }
        )
    };
    match scan {
        Wal::BadHeader(why) => return Err(corrupt(why)),
        Wal::Frames {
            salts,
            commits,
            bad_frame,
            later_commits,
        } => {
            if let Some((n, _)) = bad_frame {
                if later_commits > 0 {
                    return Err(corrupt(format!(
                        "frame {n} fails its checksum and {later_commits} commit frames of the \
                         same generation follow it"
                    )));
                }
            }
            if let Some(ix) = index.filter(|ix| ix.salts == salts) {
                if (commits as u64) < ix.mx_frame as u64 {
                    return Err(corrupt(format!(
                        "{commits} readable frames up to the last commit, but {} recorded {} \
                         committed frames",
                        shm.display(),
                        ix.mx_frame
                    )));
                }
            }
            // A bad frame that claims a commit, with nothing after it: a commit torn by an OS
            // crash (synchronous=NORMAL may lose the last commits then). Leftover frames of a
            // transaction that never committed (rolled back, or cut by a crash) are normal.
            if let Some((n, true)) = bad_frame {
                out.warnings.push(format!(
                    "{}: frame {n}, the last commit, is unreadable (a write torn by a machine \
                     crash); SQLite ignores it, so that last commit is lost",
                    wal.display()
                ));
            }
        }
    }
    Ok(out)
}

/// Writes the marker once the database and its schema exist (no-op if it is there).
pub fn mark(db: &Path) -> std::io::Result<()> {
    let marker = marker_path(db);
    if marker.exists() {
        return Ok(());
    }
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = with_suffix(db, ".created.tmp");
    {
        let mut f = File::create(&tmp)?;
        write!(
            f,
            "{name} was created here at {} ms since the epoch.\n\
             While this file exists, a missing or empty {name} is refused at startup (it was \
             wiped, not new).\nRemove this file only to start with an empty database on purpose.\n",
            crate::now_ms()
        )?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &marker)?;
    if let Some(dir) = marker.parent() {
        // The rename is durable once the directory is.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Wal {
    BadHeader(String),
    Frames {
        /// The header's salts, raw (as the `-shm` index copies them).
        salts: [u8; 8],
        /// Frames up to and including the last valid commit frame.
        commits: u32,
        /// The first frame of the current generation that fails its checksum (1-based), and
        /// whether it claims to end a commit.
        bad_frame: Option<(u32, bool)>,
        /// Commit frames of the current generation after that one. Frames past the last
        /// commit that never committed (a rolled-back transaction's spill) are overwritten
        /// by the next transaction and break the checksum chain without being corruption;
        /// a commit frame there means committed data SQLite would drop.
        later_commits: u32,
    },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
fn checksum(big_endian: bool, data: &[u8], s: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = s;
    for c in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(&c[0..4]), be32(&c[4..8]))
        } else {
            (
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

/// Reads the WAL the way SQLite's recovery does; memory is one page.
fn scan_wal(mut r: impl Read) -> std::io::Result<Wal> {
    let mut h = [0u8; WAL_HEADER];
    if read_full(&mut r, &mut h)? < WAL_HEADER {
        return Ok(Wal::BadHeader("shorter than its 32-byte header".into()));
    }
    let magic = be32(&h[0..4]);
    if magic & !1 != WAL_MAGIC {
        return Ok(Wal::BadHeader(format!("bad magic {magic:#010x}")));
    }
    let big_endian = magic & 1 == 1;
    let version = be32(&h[4..8]);
    if version != WAL_VERSION {
        return Ok(Wal::BadHeader(format!("unknown version {version}")));
    }
    let page = be32(&h[8..12]) as usize;
    if !(512..=65536).contains(&page) || !page.is_power_of_two() {
        return Ok(Wal::BadHeader(format!("bad page size {page}")));
    }
    let sum = checksum(big_endian, &h[0..24], (0, 0));
    if sum != (be32(&h[24..28]), be32(&h[28..32])) {
        return Ok(Wal::BadHeader("header checksum mismatch".into()));
    }
    let mut salts = [0u8; 8];
    salts.copy_from_slice(&h[16..24]);
    let mut s = sum;
    let mut frame = vec![0u8; FRAME_HEADER + page];
    let (mut n, mut commits, mut bad_frame, mut later_commits) = (0u32, 0u32, None, 0u32);
    loop {
        if read_full(&mut r, &mut frame)? < frame.len() {
            break;
        }
        n += 1;
        if frame[8..16] != salts {
            // A frame of an earlier generation (the WAL restarted after a checkpoint) or
            // garbage: the current generation ended before it.
            if bad_frame.is_none() {
                break;
            }
            continue;
        }
        let is_commit = be32(&frame[4..8]) != 0;
        if bad_frame.is_some() {
            later_commits += is_commit as u32;
            continue;
        }
        let next = checksum(big_endian, &frame[0..8], s);
        let next = checksum(big_endian, &frame[FRAME_HEADER..], next);
        let pgno = be32(&frame[0..4]);
        if pgno == 0 || next != (be32(&frame[16..20]), be32(&frame[20..24])) {
            bad_frame = Some((n, is_commit));
            continue;
        }
        s = next;
        if is_commit {
            commits = n;
        }
    }
    Ok(Wal::Frames {
        salts,
        commits,
        bad_frame,
        later_commits,
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// SQLite's wal-index header, from the `-shm` file a crash leaves behind (native byte order;
/// two copies that must agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Index {
    mx_frame: u32,
    backfilled: u32,
    salts: [u8; 8],
}

fn read_shm(p: &Path) -> Option<Index> {
    let mut b = [0u8; 100];
    File::open(p).ok()?.read_exact(&mut b).ok()?;
    parse_shm(&b)
}

fn parse_shm(b: &[u8; 100]) -> Option<Index> {
    let ne = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if b[0..48] != b[48..96] || ne(0) != WAL_VERSION || b[12] != 1 {
        return None;
    }
    let mut salts = [0u8; 8];
    salts.copy_from_slice(&b[32..40]);
    Some(Index {
        mx_frame: ne(16),
        backfilled: ne(96),
        salts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL as SQLite writes it: header, then frames chained by their checksums.
    fn wal(big_endian: bool, frames: &[(u32, u32)], page: usize) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&(WAL_MAGIC | big_endian as u32).to_be_bytes());
        h.extend_from_slice(&WAL_VERSION.to_be_bytes());
        h.extend_from_slice(&(page as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let s = checksum(big_endian, &h, (0, 0));
        h.extend_from_slice(&s.0.to_be_bytes());
        h.extend_from_slice(&s.1.to_be_bytes());
        let mut s = s;
        for (i, &(pgno, commit)) in frames.iter().enumerate() {
            let mut f = Vec::new();
            f.extend_from_slice(&pgno.to_be_bytes());
            f.extend_from_slice(&commit.to_be_bytes());
            f.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            let data = vec![i as u8 + 1; page];
            s = checksum(big_endian, &f[0..8], s);
            s = checksum(big_endian, &data, s);
            f.extend_from_slice(&s.0.to_be_bytes());
            f.extend_from_slice(&s.1.to_be_bytes());
            f.extend_from_slice(&data);
            h.extend_from_slice(&f);
        }
        h
    }

    fn frames(w: &[u8]) -> Wal {
        scan_wal(w).unwrap()
    }

    #[test]
    fn a_good_wal_reads_to_its_last_commit_in_both_byte_orders() {
        for be in [false, true] {
            let w = wal(be, &[(1, 0), (2, 2), (3, 0)], 512);
            assert_eq!(
                frames(&w),
                Wal::Frames {
                    salts: [1, 2, 3, 4, 5, 6, 7, 8],
                    commits: 2,
                    bad_frame: None,
                    later_commits: 0
                }
            );
        }
    }

    #[test]
    fn garbage_over_the_header_or_between_frames_is_found() {
        let w = wal(false, &[(1, 1), (2, 2), (3, 3)], 512);
        let mut g = w.clone();
        g[0..64].fill(0xAB);
        assert!(matches!(frames(&g), Wal::BadHeader(_)));
        let mut g = w.clone();
        g[27] ^= 1;
        assert_eq!(
            frames(&g),
            Wal::BadHeader("header checksum mismatch".into())
        );
        // Frame 2's page overwritten: frame 3 (same salts) follows it.
        let mut g = w.clone();
        let f2 = WAL_HEADER + FRAME_HEADER + 512 + FRAME_HEADER;
        g[f2..f2 + 100].fill(0x55);
        assert_eq!(
            frames(&g),
            Wal::Frames {
                salts: [1, 2, 3, 4, 5, 6, 7, 8],
                commits: 1,
                bad_frame: Some((2, true)),
                later_commits: 1
            }
        );
        // Garbage appended after the frames is not the current generation: ignored.
        let mut g = w.clone();
        g.extend_from_slice(&[0x77; 8192]);
        assert!(matches!(
            frames(&g),
            Wal::Frames {
                commits: 3,
                bad_frame: None,
                ..
            }
        ));
        assert!(matches!(frames(&w[..20]), Wal::BadHeader(_)));
    }

    #[test]
    fn leftovers_of_an_uncommitted_transaction_are_not_corruption() {
        // Frames 1–2 committed; 3–5 were spilled by a transaction that rolled back, then a
        // new transaction overwrote frame 3 and committed: 4–5 no longer chain.
        let old = wal(false, &[(1, 0), (2, 2), (7, 0), (8, 0), (9, 0)], 512);
        let new = wal(false, &[(1, 0), (2, 2), (3, 3)], 512);
        let mut w = new.clone();
        w.extend_from_slice(&old[new.len()..]);
        // Different page bytes in frame 3 than the old one had, so 4's chain is broken.
        assert_eq!(
            frames(&w),
            Wal::Frames {
                salts: [1, 2, 3, 4, 5, 6, 7, 8],
                commits: 3,
                bad_frame: Some((4, false)),
                later_commits: 0
            }
        );
    }

    #[test]
    fn the_shm_index_header_is_read_only_when_both_copies_agree() {
        let mut b = [0u8; 100];
        b[0..4].copy_from_slice(&WAL_VERSION.to_ne_bytes());
        b[12] = 1;
        b[16..20].copy_from_slice(&40u32.to_ne_bytes());
        b[32..40].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let (a, rest) = b.split_at_mut(48);
        rest[..48].copy_from_slice(a);
        b[96..100].copy_from_slice(&10u32.to_ne_bytes());
        assert_eq!(
            parse_shm(&b),
            Some(Index {
                mx_frame: 40,
                backfilled: 10,
                salts: [1, 2, 3, 4, 5, 6, 7, 8]
            })
        );
        b[50] ^= 1;
        assert_eq!(parse_shm(&b), None);
    }

    #[test]
    fn first_start_wiped_database_and_marker() {
        let dir = std::env::temp_dir().join(format!("dbguard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        assert!(check(&db, "state").unwrap().fresh, "first start");
        std::fs::write(&db, b"").unwrap();
        assert!(check(&db, "state").unwrap().fresh, "still no marker");
        let mut page = SQLITE_HEADER.to_vec();
        page.resize(4096, 0);
        std::fs::write(&db, &page).unwrap();
        mark(&db).unwrap();
        assert_eq!(check(&db, "state").unwrap(), Checked::default());
        std::fs::write(&db, b"").unwrap();
        let e = check(&db, "the state").unwrap_err();
        assert!(e.contains("x.db is empty (0 bytes)"), "{e}");
        assert!(e.contains("x.db.created"), "{e}");
        assert!(e.contains("Restore"), "{e}");
        std::fs::remove_file(&db).unwrap();
        assert!(check(&db, "s").unwrap_err().contains("is missing"));
        std::fs::write(&db, b"garbage that is not sqlite").unwrap();
        assert!(check(&db, "s")
            .unwrap_err()
            .contains("is not a SQLite database"));
        std::fs::remove_file(marker_path(&db)).unwrap();
        std::fs::write(&db, b"").unwrap();
        std::fs::write(dir.join("x.db-wal"), [1u8; 100]).unwrap();
        let e = check(&db, "s").unwrap_err();
        assert!(e.contains("write-ahead log"), "{e}");
        assert!(e.contains("remove ") && e.contains("x.db-wal"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
