//! What an operator lists of the webhooks refused lately and of the rate-limit keys seen: kept
//! in memory, bounded, per node (the dashboard's "Rejected requests" and the rate-limits view).
//! Not in the store: refusals are what the router did *not* store, and a flood of them must not
//! cost a write each.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::clock::now_ms;

/// How many refusals are kept (the newest).
pub const REFUSALS_KEPT: usize = 200;
/// How many `source:identifier` keys are counted; past this the least recently seen is dropped.
pub const KEYS_KEPT: usize = 1000;
/// Longer reasons and names are cut to this many characters.
const TEXT_KEPT: usize = 300;

/// A webhook answered with an error status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub at: i64,
    /// The source named in the path (cut to 300 characters), known or not.
    pub source: String,
    pub status: u16,
    pub code: String,
    /// The sentence the sender was answered.
    pub reason: String,
    pub client_ip: String,
}

/// How often one `source:identifier` was admitted and refused by its rate limit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyCount {
    pub source: String,
    pub identifier: String,
    pub allowed: u64,
    pub limited: u64,
    /// When it was last seen (ms).
    pub last_at: i64,
    /// When it was last refused (ms).
    pub last_limited_at: Option<i64>,
}

/// When an agent last answered a delivery with success, and last failed one.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentActivity {
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
}

#[derive(Default)]
pub struct Recent {
    /// By agent id: one entry per agent that was attempted (agents are few and configured).
    agents: Mutex<HashMap<String, AgentActivity>>,
    refusals: Mutex<VecDeque<Refusal>>,
    /// By source, then identifier: a lookup borrows the names, so a key already counted costs
    /// no allocation.
    keys: Mutex<HashMap<String, HashMap<String, KeyCount>>>,
}

fn cut(s: &str) -> String {
    s.chars().take(TEXT_KEPT).collect()
}

impl Recent {
    pub fn refused(&self, source: &str, status: u16, code: &str, reason: &str, client_ip: &str) {
        let r = Refusal {
            at: now_ms(),
            source: cut(source),
            status,
            code: cut(code),
            reason: cut(reason),
            client_ip: cut(client_ip),
        };
        let Ok(mut list) = self.refusals.lock() else {
            return;
        };
        if list.len() == REFUSALS_KEPT {
            list.pop_back();
        }
        list.push_front(r);
    }

    /// The refusals kept, newest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.refusals
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Counts one rate-limit decision for `source:identifier`.
    pub fn rate_checked(&self, source: &str, identifier: &str, allowed: bool) {
        let now = now_ms();
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        let count = |k: &mut KeyCount| {
            if allowed {
                k.allowed += 1;
            } else {
                k.limited += 1;
                k.last_limited_at = Some(now);
            }
            k.last_at = now;
        };
        if let Some(k) = keys.get_mut(source).and_then(|m| m.get_mut(identifier)) {
            count(k);
            return;
        }
        let total: usize = keys.values().map(HashMap::len).sum();
        if total >= KEYS_KEPT {
            let oldest = keys
                .iter()
                .flat_map(|(s, m)| {
                    m.values()
                        .map(move |k| (k.last_at, s.clone(), &k.identifier))
                })
                .min_by_key(|(at, _, _)| *at)
                .map(|(_, s, i)| (s, i.clone()));
            if let Some((s, i)) = oldest
                && let Some(m) = keys.get_mut(&s)
            {
                m.remove(&i);
                if m.is_empty() {
                    keys.remove(&s);
                }
            }
        }
        let mut k = KeyCount {
            source: cut(source),
            identifier: cut(identifier),
            allowed: 0,
            limited: 0,
            last_at: now,
            last_limited_at: None,
        };
        count(&mut k);
        keys.entry(source.to_string())
            .or_default()
            .insert(identifier.to_string(), k);
    }

    /// Notes an attempt's outcome for its agent.
    pub fn agent_attempted(&self, agent: &str, delivered: bool) {
        let now = now_ms();
        let Ok(mut agents) = self.agents.lock() else {
            return;
        };
        let a = match agents.get_mut(agent) {
            Some(a) => a,
            None => agents.entry(agent.to_string()).or_default(),
        };
        if delivered {
            a.last_success_at = Some(now);
        } else {
            a.last_failure_at = Some(now);
        }
    }

    /// What is known of each agent attempted since the start.
    pub fn agents(&self) -> HashMap<String, AgentActivity> {
        self.agents.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Every key counted, the most refused first, then the most recently seen.
    pub fn keys(&self) -> Vec<KeyCount> {
        let mut all: Vec<KeyCount> = self
            .keys
            .lock()
            .map(|k| k.values().flat_map(|m| m.values().cloned()).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| b.limited.cmp(&a.limited).then(b.last_at.cmp(&a.last_at)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_kept_newest_first_and_bounded() {
        let r = Recent::default();
        for i in 0..REFUSALS_KEPT + 5 {
            r.refused(
                &format!("s{i}"),
                401,
                "invalid_signature",
                "Invalid webhook signature",
                "10.0.0.1",
            );
        }
        let list = r.refusals();
        assert_eq!(list.len(), REFUSALS_KEPT);
        assert_eq!(list[0].source, format!("s{}", REFUSALS_KEPT + 4));
        r.refused(
            &"x".repeat(5000),
            413,
            "payload_too_large",
            "too large",
            "::1",
        );
        assert_eq!(r.refusals()[0].source.len(), TEXT_KEPT);
    }

    #[test]
    fn an_agent_s_last_success_and_failure_are_kept() {
        let r = Recent::default();
        r.agent_attempted("a", false);
        let a = r.agents()["a"];
        assert!(a.last_failure_at.is_some() && a.last_success_at.is_none());
        r.agent_attempted("a", true);
        assert!(r.agents()["a"].last_success_at.is_some());
    }

    #[test]
    fn keys_count_allowed_and_limited_and_drop_the_least_recent() {
        let r = Recent::default();
        r.rate_checked("github", "octocat", true);
        r.rate_checked("github", "octocat", false);
        r.rate_checked("github", "hubot", true);
        let keys = r.keys();
        assert_eq!(keys[0].identifier, "octocat", "the most refused first");
        assert_eq!((keys[0].allowed, keys[0].limited), (1, 1));
        assert!(keys[0].last_limited_at.is_some());
        for i in 0..KEYS_KEPT {
            r.rate_checked("linear", &format!("org{i}"), true);
        }
        let keys = r.keys();
        assert_eq!(keys.len(), KEYS_KEPT);
        assert!(keys.iter().any(|k| k.identifier == "org999"));
    }
}
