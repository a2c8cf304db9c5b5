//! The peer transport: length-prefixed JSON frames (4-byte big-endian length, at most
//! [`MAX_FRAME`]) over TCP, one request and one reply at a time per connection. It carries
//! openraft's RPCs and the client operations a member forwards to the leader.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::types::{NodeId, Request, TypeConfig, MAX_FRAME};

pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A client operation a member forwards to the leader it knows (one hop, never further).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientOp {
    Write(Request),
    Read { key: String },
    Join { node_id: NodeId, addr: String },
    Leave { node_id: NodeId },
}

/// A client operation's answer. `NotApplied` is safe to retry (nothing was proposed);
/// `Unknown` may or may not have taken effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    Ok(Option<String>),
    NotApplied(String),
    Unknown(String),
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    Client(ClientOp),
}

/// Every frame names the node it is for: a member that got a port another member used is
/// never taken for it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub to: NodeId,
    pub rpc: Rpc,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Client(ClientReply),
    Refused(String),
}

/// Frame length check, apart so it is unit-tested.
pub fn frame_len(header: [u8; 4]) -> Result<usize, String> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(format!("frame of {n} bytes exceeds {MAX_FRAME}"));
    }
    Ok(n)
}

pub async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    let n = frame_len(h).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

pub async fn write_frame<T: Serialize>(s: &mut TcpStream, v: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {} bytes exceeds {MAX_FRAME}",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    s.write_all(&out).await
}

/// Why an exchange failed: before anything was sent (a retry is safe), or after.
#[derive(Debug)]
pub enum ExchangeError {
    Connect(std::io::Error),
    AfterSend(std::io::Error),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Connect(e) => write!(f, "connect: {e}"),
            ExchangeError::AfterSend(e) => write!(f, "exchange: {e}"),
        }
    }
}

async fn connect(addr: &str) -> Result<TcpStream, ExchangeError> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            ExchangeError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect {addr}: no answer within {CONNECT_TIMEOUT:?}"),
            ))
        })?
        .map_err(|e| {
            ExchangeError::Connect(std::io::Error::new(
                e.kind(),
                format!("connect {addr}: {e}"),
            ))
        })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn exchange_on(s: &mut TcpStream, env: &Envelope, ttl: Duration) -> std::io::Result<Reply> {
    let io = async {
        write_frame(s, env).await?;
        let buf = read_frame(s).await?;
        serde_json::from_slice::<Reply>(&buf).map_err(std::io::Error::other)
    };
    tokio::time::timeout(ttl, io).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no reply within {ttl:?}"),
        )
    })?
}

/// One request on a fresh connection (client operations forwarded to the leader).
pub async fn exchange(addr: &str, env: &Envelope, ttl: Duration) -> Result<Reply, ExchangeError> {
    let mut s = connect(addr).await?;
    exchange_on(&mut s, env, ttl)
        .await
        .map_err(ExchangeError::AfterSend)
}

/// Makes a [`Peer`] per target; openraft asks for one per replication stream.
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            conn: None,
        }
    }
}

/// One target's connection, opened on first use and again after any error.
pub struct Peer {
    target: NodeId,
    addr: String,
    conn: Option<TcpStream>,
}

type RErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Peer {
    async fn call(&mut self, rpc: Rpc, ttl: Duration) -> Result<Reply, ExchangeError> {
        let env = Envelope {
            to: self.target,
            rpc,
        };
        let mut s = match self.conn.take() {
            Some(s) => s,
            None => connect(&self.addr).await?,
        };
        match exchange_on(&mut s, &env, ttl).await {
            Ok(r) => {
                self.conn = Some(s);
                Ok(r)
            }
            Err(e) => Err(ExchangeError::AfterSend(e)),
        }
    }

    fn fail<E: std::error::Error>(&self, e: ExchangeError) -> RErr<E> {
        match e {
            ExchangeError::Connect(e) => RPCError::Unreachable(Unreachable::new(&e)),
            ExchangeError::AfterSend(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn unexpected<E: std::error::Error>(&self, r: Reply) -> RErr<E> {
        let e = std::io::Error::other(format!(
            "node {} at {} answered {r:?}",
            self.target, self.addr
        ));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RErr> {
        match self.call(Rpc::Append(rpc), option.hard_ttl()).await {
            Ok(Reply::Append(Ok(r))) => Ok(r),
            Ok(Reply::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RErr<InstallSnapshotError>> {
        match self.call(Rpc::Snapshot(rpc), option.hard_ttl()).await {
            Ok(Reply::Snapshot(Ok(r))) => Ok(r),
            Ok(Reply::Snapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RErr> {
        match self.call(Rpc::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(Ok(r))) => Ok(r),
            Ok(Reply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.fail(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_past_the_bound_are_refused() {
        assert_eq!(frame_len(16u32.to_be_bytes()).unwrap(), 16);
        assert_eq!(
            frame_len((MAX_FRAME as u32).to_be_bytes()).unwrap(),
            MAX_FRAME
        );
        assert!(frame_len((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn envelopes_round_trip() {
        let e = Envelope {
            to: 3,
            rpc: Rpc::Client(ClientOp::Join {
                node_id: 9,
                addr: "127.0.0.1:1".into(),
            }),
        };
        let s = serde_json::to_string(&e).unwrap();
        let back: Envelope = serde_json::from_str(&s).unwrap();
        assert_eq!(back.to, 3);
        assert!(matches!(
            back.rpc,
            Rpc::Client(ClientOp::Join { node_id: 9, .. })
        ));
        let r = Reply::Client(ClientReply::Unknown("x".into()));
        let back: Reply = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert!(matches!(back, Reply::Client(ClientReply::Unknown(_))));
    }
}
