//! The write side of a framed session, shared by Ghost and Mirage: a task that owns the write
//! half and takes frames from a bounded channel. It feeds every frame queued right now, then
//! flushes once (batching under load), bounds each flush by the write timeout, flushes what is
//! left when the channel closes, and reports the first error. Using a channel instead of
//! actix's `FramedWrite` avoids losing the last frame when an actor stops right after writing.

use std::time::Duration;

use futures::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use crate::error::WireError;
use crate::wire::{Frame, FrameCodec};

/// Spawns the writer on the current thread's task set (the actix Arbiter of the caller).
pub fn spawn_frame_writer<W, F>(
    w: W,
    codec: FrameCodec,
    mut rx: mpsc::Receiver<Frame>,
    write_timeout: Duration,
    on_error: F,
) where
    W: AsyncWrite + Unpin + 'static,
    F: FnOnce(WireError) + 'static,
{
    tokio::task::spawn_local(async move {
        let mut sink = FramedWrite::new(w, codec);
        while let Some(f) = rx.recv().await {
            let mut res = sink.feed(f).await;
            while res.is_ok() {
                match rx.try_recv() {
                    Ok(f) => res = sink.feed(f).await,
                    Err(_) => break,
                }
            }
            if res.is_ok() {
                res = match tokio::time::timeout(write_timeout, SinkExt::<Frame>::flush(&mut sink))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(WireError::Io("write timed out".into())),
                };
            }
            if let Err(e) = res {
                on_error(e);
                return;
            }
        }
        let _ = tokio::time::timeout(write_timeout, SinkExt::<Frame>::close(&mut sink)).await;
    });
}

/// Resolves on Ctrl-C or SIGTERM (the way operators and service managers stop us).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
