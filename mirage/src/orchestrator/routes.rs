//! Routes (pure): which intent a command belongs to (so its event reaches that plan), and
//! which intents want to hear when a Ghost comes back.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Routes {
    /// command_id → intent_id, while the command awaits its event.
    by_command: HashMap<String, String>,
    /// intent_id → its command_ids, to forget them when it finishes.
    by_intent: HashMap<String, Vec<String>>,
    /// ghost_id → intents that owe it commands or a catch-up.
    interest: HashMap<String, HashSet<String>>,
}

impl Routes {
    /// A command went (or waits) for `ghost`: its event goes to `intent`, and `intent`
    /// hears when `ghost` comes back.
    pub fn dispatched(&mut self, intent: &str, ghost: &str, command_id: &str) {
        if self
            .by_command
            .insert(command_id.to_owned(), intent.to_owned())
            .is_none()
        {
            self.by_intent
                .entry(intent.to_owned())
                .or_default()
                .push(command_id.to_owned());
        }
        self.watch(intent, ghost);
    }

    /// A resumed plan's outstanding command (at start, before it resumes).
    pub fn resumed(&mut self, intent: &str, ghost: &str, command_id: &str) {
        self.by_command
            .insert(command_id.to_owned(), intent.to_owned());
        self.by_intent
            .entry(intent.to_owned())
            .or_default()
            .push(command_id.to_owned());
        self.watch(intent, ghost);
    }

    pub fn watch(&mut self, intent: &str, ghost: &str) {
        self.interest
            .entry(ghost.to_owned())
            .or_default()
            .insert(intent.to_owned());
    }

    /// The intent an event's command belongs to, taken off (an event answers it once).
    pub fn take(&mut self, command_id: &str) -> Option<String> {
        self.by_command.remove(command_id)
    }

    /// Puts back a route taken for an event that could not be recorded (it comes again).
    pub fn restore(&mut self, command_id: &str, intent: String) {
        self.by_command.insert(command_id.to_owned(), intent);
    }

    /// The intent has finished or was refused: none of its routes stay.
    pub fn forget(&mut self, intent: &str) {
        if let Some(cids) = self.by_intent.remove(intent) {
            for c in cids {
                self.by_command.remove(&c);
            }
        }
        for set in self.interest.values_mut() {
            set.remove(intent);
        }
    }

    /// Intents to tell that `ghost` is back.
    pub fn interested<'a>(&'a self, ghost: &str) -> impl Iterator<Item = &'a String> + 'a {
        self.interest.get(ghost).into_iter().flatten()
    }

    /// Commands awaiting their event.
    pub fn len(&self) -> usize {
        self.by_command.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_command.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_finds_its_intent_once_and_a_finished_intent_leaves_nothing() {
        let mut r = Routes::default();
        r.dispatched("i1", "g1", "c1");
        r.dispatched("i1", "g2", "c2");
        r.dispatched("i2", "g1", "c3");
        assert_eq!(r.len(), 3);
        assert_eq!(r.take("c1").as_deref(), Some("i1"));
        assert_eq!(r.take("c1"), None, "answered once");
        // Not recorded: it comes back for the re-sent event.
        r.restore("c1", "i1".into());
        assert_eq!(r.take("c1").as_deref(), Some("i1"));
        let mut g1: Vec<&String> = r.interested("g1").collect();
        g1.sort();
        assert_eq!(g1, ["i1", "i2"]);
        r.forget("i1");
        assert_eq!(r.take("c2"), None);
        assert_eq!(r.len(), 1);
        assert_eq!(r.interested("g1").collect::<Vec<_>>(), ["i2"]);
        assert_eq!(r.interested("g2").count(), 0);
        assert_eq!(r.interested("nobody").count(), 0);
    }

    #[test]
    fn a_re_sent_command_keeps_one_route() {
        let mut r = Routes::default();
        r.dispatched("i1", "g1", "c1");
        r.dispatched("i1", "g1", "c1");
        r.forget("i1");
        assert!(r.is_empty());
    }
}
