//! systemd readiness (`Type=notify`): one datagram to `$NOTIFY_SOCKET` (sd_notify(3)'s
//! protocol), with std's UnixDatagram rather than a crate. Without the variable (not under
//! systemd) it does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. "READY=1", "STOPPING=1") to the service manager, if there is one.
/// Failures are logged, never fatal: readiness is a courtesy to the manager.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(component = "notify", error = %e, state, "sd_notify failed");
    }
}

/// The SIGTERM/SIGINT handlers, installed before the process says it is ready: a stop sent
/// right after the "ready" line or READY=1 must be a graceful one, not SIGTERM's default
/// action (which kills without flushing).
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs both handlers now. Must run inside a Tokio runtime (the actix System's).
    pub fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Tells the manager READY=1, waits for a signal and tells it STOPPING=1.
    pub async fn ready_until_signal(mut self) {
        notify("READY=1");
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
        notify("STOPPING=1");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    // '@' is an abstract-namespace socket (Linux).
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let p = std::env::temp_dir().join(format!("notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let rx = UnixDatagram::bind(&p).unwrap_or_else(|e| panic!("bind: {e}"));
        send(p.as_os_str(), "READY=1").unwrap_or_else(|e| panic!("send: {e}"));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap_or(0);
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&p);
    }
}
