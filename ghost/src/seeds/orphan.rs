//! Children a SIGKILLed Ghost could not stop. A supervised service runs in its own process
//! group; when the Ghost dies without its SIGTERM path (SIGKILL, OOM kill, power to the
//! container's init only) the group is re-parented to init and keeps its ports and data. Each
//! started child is recorded in its service directory (pid, start time since boot, boot id), and
//! a Ghost starting a seed stops every recorded group whose leader is still that same process.
//! The start time and boot id make a reused PID harmless: a record matching nothing is removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The record's file name inside a service's directory.
pub const FILE: &str = ".ghost-child";

/// What identifies one process across PID reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// Field 22 of /proc/PID/stat: clock ticks since boot at which the process started.
    pub start_ticks: u64,
    pub boot_id: String,
}

impl Record {
    pub fn render(&self) -> String {
        format!("{} {} {}\n", self.pid, self.start_ticks, self.boot_id)
    }

    pub fn parse(s: &str) -> Option<Record> {
        let mut it = s.split_whitespace();
        let pid = it.next()?.parse().ok().filter(|&p: &u32| p > 1)?;
        let start_ticks = it.next()?.parse().ok()?;
        let boot_id = it.next()?.to_owned();
        if it.next().is_some() || boot_id.len() > 64 {
            return None;
        }
        Some(Record {
            pid,
            start_ticks,
            boot_id,
        })
    }
}

/// The start time (field 22) of a /proc/PID/stat line, and whether the process is a zombie.
/// The command name (field 2) is in parentheses and may itself hold spaces and parentheses,
/// so fields are counted after the last `)`.
pub fn parse_stat(stat: &str) -> Option<(u64, bool)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?; // field 3
    let start = f.nth(18)?.parse().ok()?; // field 22
    Some((start, state == "Z"))
}

/// Whether the live process (its stat line, this boot) is the one recorded.
pub fn is_recorded(r: &Record, stat: Option<&str>, boot_id: &str) -> bool {
    if r.boot_id != boot_id {
        return false;
    }
    match stat.and_then(parse_stat) {
        Some((start, zombie)) => !zombie && start == r.start_ticks,
        None => false,
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn stat_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Records a child just started as the leader of its own process group.
pub fn record(service_dir: &Path, pid: u32) -> Result<(), String> {
    let (start_ticks, _) = stat_of(pid)
        .as_deref()
        .and_then(parse_stat)
        .ok_or_else(|| format!("no /proc/{pid}/stat for the child just started"))?;
    let r = Record {
        pid,
        start_ticks,
        boot_id: boot_id(),
    };
    let path = service_dir.join(FILE);
    let tmp = service_dir.join(format!("{FILE}.tmp"));
    std::fs::create_dir_all(service_dir)
        .and_then(|()| std::fs::write(&tmp, r.render()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The child exited or was stopped by this Ghost: nothing to find at the next start.
pub fn clear(service_dir: &Path) {
    let _ = std::fs::remove_file(service_dir.join(FILE));
}

/// Stops the recorded group in `service_dir` if its leader is the recorded process: TERM, then
/// KILL after `grace`. Returns the pid stopped, if any; the record is removed either way.
pub fn reap(service_dir: &Path, grace: Duration) -> Option<u32> {
    let path = service_dir.join(FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    let found = Record::parse(&text)
        .filter(|r| is_recorded(r, stat_of(r.pid).as_deref(), &boot_id()))
        .map(|r| r.pid);
    if let Some(pid) = found {
        stop_group(pid, grace);
    }
    let _ = std::fs::remove_file(&path);
    found
}

fn stop_group(pid: u32, grace: Duration) {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::TERM);
    let deadline = Instant::now() + grace;
    // The orphan is init's child now: it cannot be waited for, only watched in /proc.
    let gone = || {
        stat_of(pid)
            .as_deref()
            .and_then(parse_stat)
            .is_none_or(|(_, zombie)| zombie)
    };
    while Instant::now() < deadline {
        if gone() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
}

/// Every recorded orphan under a seed's directory (one subdirectory per service), stopped.
pub fn reap_all(seed_dir: &Path, grace: Duration) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(seed_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // Bounded: a seed has at most MAX_SERVICES services; a directory full of other things is
    // not walked past that many entries.
    for e in entries.flatten().take(4096) {
        let d = e.path();
        if d.is_dir() {
            if let Some(pid) = reap(&d, grace) {
                out.push((d, pid));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (redis-server *:6) S 1 4242 4242 0 -1 4194560 150 0 0 0 1 2 0 0 20 0 4 0 987654 12345678 900 18446744073709551615 1 1 0 0 0 0 0 4097 17610 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn the_start_time_is_field_22_even_with_spaces_and_parens_in_the_name() {
        assert_eq!(parse_stat(STAT), Some((987654, false)));
        let odd = STAT.replace("(redis-server *:6)", "(a) b) c)");
        assert_eq!(parse_stat(&odd), Some((987654, false)));
        let zombie = STAT.replace(") S ", ") Z ");
        assert_eq!(parse_stat(&zombie), Some((987654, true)));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn a_record_round_trips_and_garbage_is_refused() {
        let r = Record {
            pid: 4242,
            start_ticks: 987654,
            boot_id: "b-1".into(),
        };
        assert_eq!(Record::parse(&r.render()), Some(r));
        for bad in [
            "",
            "4242",
            "4242 1",
            "x 1 b",
            "1 1 b",
            "0 1 b",
            "4242 1 b extra",
        ] {
            assert_eq!(Record::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_same_process_of_the_same_boot_is_recorded() {
        let r = Record {
            pid: 4242,
            start_ticks: 987654,
            boot_id: "boot-a".into(),
        };
        assert!(is_recorded(&r, Some(STAT), "boot-a"));
        // The PID was reused by a later process, or the machine rebooted, or it is gone.
        let later = STAT.replace(" 987654 ", " 987999 ");
        assert!(!is_recorded(&r, Some(&later), "boot-a"));
        assert!(!is_recorded(&r, Some(STAT), "boot-b"));
        assert!(!is_recorded(&r, None, "boot-a"));
        assert!(!is_recorded(
            &r,
            Some(&STAT.replace(") S ", ") Z ")),
            "boot-a"
        ));
    }

    #[test]
    fn a_recorded_group_is_stopped_and_an_unrelated_pid_is_not() {
        let dir = std::env::temp_dir().join(format!("ghost-orphan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        record(&dir, child.id()).unwrap();
        assert_eq!(reap(&dir, Duration::from_secs(5)), Some(child.id()));
        // Ours, so wait() shows how it ended: by the TERM sent to its group.
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(15));
        assert!(!dir.join(FILE).exists());

        // A record naming a live process that is not the recorded one (our own pid, another
        // start time) is removed without a signal.
        let me = std::process::id();
        let wrong = Record {
            pid: me,
            start_ticks: 1,
            boot_id: boot_id(),
        };
        std::fs::write(dir.join(FILE), wrong.render()).unwrap();
        assert_eq!(reap(&dir, Duration::from_secs(1)), None);
        assert!(!dir.join(FILE).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
