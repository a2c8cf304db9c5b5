//! What this process knows of its leadership, for `/v1/overview`, `/metrics` and the
//! follower API. One per process (like `store::DISK`); `None` with the SQLite store.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The election key's value: who leads and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub mirage_id: String,
    /// `host:port` of its HTTP API ("" when it has none).
    pub api: String,
    /// `host:port` of its Ghost session listener.
    pub session: String,
}

impl LeaderInfo {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An election value that is not ours to parse (another version) still names someone.
    pub fn decode(v: &str) -> LeaderInfo {
        serde_json::from_str(v).unwrap_or_else(|_| LeaderInfo {
            mirage_id: v.to_owned(),
            api: String::new(),
            session: String::new(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HaView {
    /// "candidate", "follower", "recovering" (won, reading the state back), "leader"
    /// (orchestrating) or "deposed".
    pub role: &'static str,
    pub store: &'static str,
    pub endpoints: Vec<String>,
    pub election_key: String,
    /// The leader as etcd names it (ourselves when leading).
    pub leader: Option<LeaderInfo>,
    /// The election key's create revision while we lead (the fence, and the epoch of the
    /// seed-lock fencing tokens).
    pub election_revision: Option<i64>,
    /// Why we stopped leading.
    pub why: Option<String>,
}

pub struct HaStatus {
    view: Mutex<Option<HaView>>,
}

pub static HA: HaStatus = HaStatus {
    view: Mutex::new(None),
};

impl HaStatus {
    pub fn get(&self) -> Option<HaView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, v: HaView) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }

    pub fn update(&self, f: impl FnOnce(&mut HaView)) {
        if let Some(v) = self.view.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            f(v);
        }
    }

    /// 1 while leading, 0 otherwise (also 0 without HA).
    pub fn leading(&self) -> bool {
        self.get().is_some_and(|v| v.role == "leader")
    }
}
