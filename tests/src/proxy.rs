//! A TCP proxy between a Ghost and Mirage whose connections can be cut on demand (a dropped
//! link, not a crashed process). Runs on its own thread; stops when dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: String,
    cut: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let target = target.to_owned();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap().to_string();
        let (cut, cut_rx) = watch::channel(0u64);
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let target = Arc::new(target);
                loop {
                    let accepted = tokio::select! {
                        _ = &mut stop_rx => return,
                        a = listener.accept() => a,
                    };
                    let Ok((mut inbound, _)) = accepted else { continue };
                    let target = target.clone();
                    let mut cut_rx = cut_rx.clone();
                    tokio::spawn(async move {
                        let Ok(Ok(mut outbound)) = tokio::time::timeout(
                            Duration::from_secs(5),
                            TcpStream::connect(target.as_str()),
                        )
                        .await
                        else {
                            return;
                        };
                        let gen = *cut_rx.borrow_and_update();
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = async { while cut_rx.changed().await.is_ok() { if *cut_rx.borrow() != gen { break } } } => {}
                        }
                    });
                }
            });
        });
        Proxy {
            addr,
            cut,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Drops every connection open now (new ones are accepted again).
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
