//! A real 3-member etcd cluster (Debian's `etcd-server`) on 127.0.0.1 ephemeral ports: each
//! member a child process with its own data dir; members can be SIGKILLed, SIGSTOPped,
//! SIGCONTed and restarted by PID. Everything is killed and removed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, TempDir};

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    token: String,
    dir: TempDir,
}

/// Whether `etcd` is on PATH; prints a SKIPPED line if not (scripts/deps.sh --test installs it).
pub fn available() -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    // CI installs it (scripts/deps.sh --test): a missing etcd there is a failure, not a skip.
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "etcd not installed under CI"
    );
    if !ok {
        eprintln!("SKIPPED: no etcd binary (scripts/deps.sh --test installs etcd-server)");
    }
    ok
}

impl EtcdCluster {
    /// Starts `n` members and waits (bounded) until every one reports healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = TempDir::new("etcd");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("mg-{}-{}", std::process::id(), members[0].client_port);
        let mut c = EtcdCluster {
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i, Duration::from_secs(30));
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.path(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path(&format!("{}.log", m.name)))
            .unwrap();
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path(&format!("{}.log", self.members[i].name)))
            .unwrap_or_default()
    }

    /// `GET /health` on member `i` says healthy (it has a leader and can serve).
    pub fn healthy(&self, i: usize) -> bool {
        get(&self.members[i].endpoint(), "/health")
            .map(|b| b.contains("\"health\":\"true\""))
            .unwrap_or(false)
    }

    pub fn wait_healthy(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.healthy(i) {
            assert!(
                Instant::now() < deadline,
                "etcd member {} not healthy within {within:?}; log:\n{}",
                self.members[i].name,
                crate::tail(&self.log(i), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(pid) = self.members[i].pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    pub fn sigkill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigstop(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn sigcont(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Starts a killed member again on its data dir and ports (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        self.sigkill(i);
        self.spawn(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // SIGKILL ends a stopped member too; SIGCONT first so nothing is left frozen.
            self.sigcont(i);
            self.sigkill(i);
        }
    }
}

/// A bounded plain-HTTP GET; the body.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.take(64 * 1024).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}
