//! What Mirage knows of the fleet when it places a step: read by the plan and by the step
//! expansions (raft_keep), so it sits below both.

use std::collections::BTreeMap;

/// What Mirage knows of the fleet when it places a step.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// ghost id → (connected, seed id → declared operations; `None` = not declared).
    pub ghosts: BTreeMap<String, GhostView>,
    /// The co-located local Ghost, preferred for `on = "one"`.
    pub local: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GhostView {
    pub connected: bool,
    /// Drained by an operator (`mirage ghost drain`): no new step is placed here; commands
    /// already sent run to their end.
    pub drained: bool,
    pub seeds: BTreeMap<String, Option<Vec<String>>>,
    /// (seed, operation) pairs the Ghost declared idempotent at registration. Anything else
    /// may have had its effect when an attempt ends without a terminal event.
    pub idempotent: std::collections::BTreeSet<(String, String)>,
    /// Latest observed state per seed instance (`seed.service/web`), read by observed checks.
    pub observed: BTreeMap<String, BTreeMap<String, String>>,
    /// When its session ended (0 while connected, or not known): how long it has been gone.
    pub disconnected_ms: u64,
}

impl FleetView {
    /// Declared idempotent by this Ghost (unknown Ghost or undeclared: no).
    pub fn idempotent(&self, ghost: &str, seed: &str, op: &str) -> bool {
        self.ghosts
            .get(ghost)
            .is_some_and(|g| g.idempotent.contains(&(seed.to_owned(), op.to_owned())))
    }

    pub(crate) fn hosts(&self, ghost: &str, seed: &str, op: &str) -> Result<bool, String> {
        let Some(g) = self.ghosts.get(ghost) else {
            return Ok(false);
        };
        match g.seeds.get(seed) {
            None => Ok(false),
            Some(Some(ops)) if !ops.iter().any(|o| o == op) => Err(format!(
                "{ghost} does not declare operation {op:?} for {seed} (declared: {})",
                ops.join(", ")
            )),
            Some(_) => Ok(true),
        }
    }
}
