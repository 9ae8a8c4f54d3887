//! An agent's circuit breaker: the state machine the dispatcher keeps per lane.
//!
//! Closed: attempts go as usual; failures are counted. Open: no attempt is made until the next
//! probe time (waiting deliveries spend no attempts). Half-open: one probe attempt is under way;
//! its success closes the breaker, its failure opens it again for twice the cooldown (up to
//! the cap). A cooldown is never shorter than what the agent asked for with `Retry-After`.

use std::collections::VecDeque;

use serde::Serialize;

use crate::deliver::BreakerPolicy;

/// The fewest attempts in the window before `failureRatio` can open the breaker.
const RATIO_MIN_ATTEMPTS: usize = 10;

/// Outcomes remembered for the failure ratio, at most.
const RATIO_MEMORY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The Prometheus gauge's value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
        }
    }
}

/// What the dispatcher may do with a lane now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Attempts as concurrency and pacing allow.
    Any,
    /// One probe attempt (the breaker turns half-open when it starts).
    Probe,
    /// Nothing until this time (ms).
    WaitUntil(i64),
    /// Nothing until the probe under way ends.
    Probing,
}

/// A change worth telling about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Reopened,
    Recovered,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    pub state: State,
    /// When the state last changed (ms).
    pub since: i64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// When the next probe may start (open only).
    pub next_probe_at: Option<i64>,
    /// The cooldown the next opening uses.
    cooldown_ms: u64,
    /// Since when the agent has failed without a success (`None` after a success).
    pub failing_since: Option<i64>,
    /// Recent outcomes (time, failed) for the failure ratio.
    recent: VecDeque<(i64, bool)>,
}

impl Breaker {
    pub fn new(now: i64, policy: &BreakerPolicy) -> Breaker {
        Breaker {
            state: State::Closed,
            since: now,
            consecutive_failures: 0,
            last_error: None,
            next_probe_at: None,
            cooldown_ms: policy.cooldown_ms,
            failing_since: None,
            recent: VecDeque::new(),
        }
    }

    pub fn admission(&self, now: i64) -> Admission {
        match self.state {
            State::Closed => Admission::Any,
            State::HalfOpen => Admission::Probing,
            State::Open => match self.next_probe_at {
                Some(at) if at > now => Admission::WaitUntil(at),
                _ => Admission::Probe,
            },
        }
    }

    /// The probe attempt starts.
    pub fn probe_started(&mut self, now: i64) {
        self.state = State::HalfOpen;
        self.since = now;
        self.next_probe_at = None;
    }

    pub fn succeeded(&mut self, now: i64, policy: &BreakerPolicy) -> Option<Transition> {
        self.consecutive_failures = 0;
        self.failing_since = None;
        self.remember(now, false, policy);
        if self.state == State::Closed {
            return None;
        }
        self.state = State::Closed;
        self.since = now;
        self.next_probe_at = None;
        self.cooldown_ms = policy.cooldown_ms;
        Some(Transition::Recovered)
    }

    /// A failed attempt; `retry_after_ms` is what the agent asked for, if anything. `probe`:
    /// the attempt was the half-open probe.
    pub fn failed(
        &mut self,
        now: i64,
        error: &str,
        retry_after_ms: Option<u64>,
        probe: bool,
        policy: &BreakerPolicy,
    ) -> Option<Transition> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some(error.chars().take(500).collect());
        self.failing_since.get_or_insert(now);
        self.remember(now, true, policy);
        let wait = |cooldown: u64| now + cooldown.max(retry_after_ms.unwrap_or(0)) as i64;
        match self.state {
            State::Closed if self.trips(policy) => {
                self.state = State::Open;
                self.since = now;
                self.cooldown_ms = policy.cooldown_ms;
                self.next_probe_at = Some(wait(self.cooldown_ms));
                Some(Transition::Opened)
            }
            State::HalfOpen if probe => {
                self.cooldown_ms = (self.cooldown_ms.saturating_mul(2)).min(policy.max_cooldown_ms);
                self.state = State::Open;
                self.since = now;
                self.next_probe_at = Some(wait(self.cooldown_ms));
                Some(Transition::Reopened)
            }
            // An attempt that was under way when the breaker opened: it may push the next probe
            // later (its Retry-After), never earlier.
            State::Open => {
                if let (Some(at), Some(ra)) = (self.next_probe_at, retry_after_ms) {
                    self.next_probe_at = Some(at.max(now + ra as i64));
                }
                None
            }
            _ => None,
        }
    }

    /// Another node's breaker for the agent opened until `until`: this one opens too (a closed
    /// one; one already open keeps its own probe time unless that is earlier).
    pub fn opened_elsewhere(&mut self, now: i64, until: i64) {
        match self.state {
            State::Closed => {
                self.state = State::Open;
                self.since = now;
                self.next_probe_at = Some(until);
            }
            State::Open => {
                self.next_probe_at = Some(self.next_probe_at.map_or(until, |t| t.max(until)));
            }
            State::HalfOpen => {}
        }
    }

    /// Another node's probe succeeded (or its breaker was reset): this one closes.
    pub fn closed_elsewhere(&mut self, now: i64, policy: &BreakerPolicy) {
        if self.state != State::Closed {
            *self = Breaker::new(now, policy);
        }
    }

    /// Closed again by an operator (or the agent was re-enabled).
    pub fn reset(&mut self, now: i64, policy: &BreakerPolicy) {
        *self = Breaker::new(now, policy);
    }

    /// Whether the agent has failed without a success for `disableAfterMs`.
    pub fn should_disable(&self, now: i64, policy: &BreakerPolicy) -> bool {
        match (self.failing_since, policy.disable_after_ms) {
            (Some(since), Some(after)) => now - since >= after as i64,
            _ => false,
        }
    }

    fn trips(&self, policy: &BreakerPolicy) -> bool {
        if self.consecutive_failures >= policy.failure_threshold {
            return true;
        }
        let Some(ratio) = policy.failure_ratio else {
            return false;
        };
        let n = self.recent.len();
        if n < RATIO_MIN_ATTEMPTS {
            return false;
        }
        let failed = self.recent.iter().filter(|(_, f)| *f).count();
        failed as f64 >= ratio * n as f64
    }

    fn remember(&mut self, now: i64, failed: bool, policy: &BreakerPolicy) {
        if policy.failure_ratio.is_none() {
            return;
        }
        let floor = now - policy.window_ms as i64;
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| *t < floor || self.recent.len() >= RATIO_MEMORY)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, failed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: 3,
            failure_ratio: None,
            window_ms: 60_000,
            cooldown_ms: 1_000,
            max_cooldown_ms: 3_000,
            disable_after_ms: Some(10_000),
        }
    }

    #[test]
    fn opens_after_the_threshold_probes_after_the_cooldown_and_backs_off() {
        let p = policy();
        let mut b = Breaker::new(0, &p);
        assert_eq!(b.failed(1, "500", None, false, &p), None);
        assert_eq!(b.failed(2, "500", None, false, &p), None);
        assert_eq!(b.admission(2), Admission::Any);
        assert_eq!(
            b.failed(3, "500", None, false, &p),
            Some(Transition::Opened)
        );
        assert_eq!(b.admission(3), Admission::WaitUntil(1_003));
        // An attempt that was under way fails too: nothing changes.
        assert_eq!(b.failed(4, "500", None, false, &p), None);
        assert_eq!(b.admission(1_003), Admission::Probe);
        b.probe_started(1_003);
        assert_eq!(b.admission(1_004), Admission::Probing);
        // The probe fails: open for twice as long, then capped.
        assert_eq!(
            b.failed(1_010, "500", None, true, &p),
            Some(Transition::Reopened)
        );
        assert_eq!(b.admission(1_010), Admission::WaitUntil(3_010));
        b.probe_started(3_010);
        b.failed(3_020, "500", None, true, &p);
        assert_eq!(b.admission(3_020), Admission::WaitUntil(6_020));
        b.probe_started(6_020);
        b.failed(6_030, "500", None, true, &p);
        assert_eq!(b.admission(6_030), Admission::WaitUntil(9_030), "capped");
        // A success closes it and starts the cooldown over.
        b.probe_started(9_030);
        assert_eq!(b.succeeded(9_040, &p), Some(Transition::Recovered));
        assert_eq!(b.state, State::Closed);
        assert_eq!(b.consecutive_failures, 0);
        for t in 0..3 {
            b.failed(10_000 + t, "500", None, false, &p);
        }
        assert_eq!(b.admission(10_002), Admission::WaitUntil(11_002));
    }

    #[test]
    fn retry_after_lengthens_the_cooldown() {
        let p = policy();
        let mut b = Breaker::new(0, &p);
        b.failed(1, "503", None, false, &p);
        b.failed(2, "503", None, false, &p);
        b.failed(3, "503", Some(30_000), false, &p);
        assert_eq!(b.admission(3), Admission::WaitUntil(30_003));
        // A later answer under way asks for longer still.
        b.failed(4, "503", Some(60_000), false, &p);
        assert_eq!(b.admission(4), Admission::WaitUntil(60_004));
    }

    #[test]
    fn a_failure_ratio_opens_it_without_a_streak() {
        let p = BreakerPolicy {
            failure_threshold: 1_000,
            failure_ratio: Some(0.5),
            ..policy()
        };
        let mut b = Breaker::new(0, &p);
        let mut opened = None;
        for i in 0..20 {
            let t = if i % 2 == 0 {
                b.failed(i, "500", None, false, &p)
            } else {
                b.succeeded(i, &p)
            };
            if t.is_some() {
                opened = Some(i);
                break;
            }
        }
        assert_eq!(opened, Some(10), "half of the first ten (and more) failed");
    }

    #[test]
    fn a_long_failure_without_success_asks_to_disable() {
        let p = policy();
        let mut b = Breaker::new(0, &p);
        b.failed(100, "500", None, false, &p);
        assert!(!b.should_disable(10_099, &p));
        assert!(b.should_disable(10_100, &p));
        b.succeeded(10_101, &p);
        assert!(!b.should_disable(50_000, &p));
        let never = BreakerPolicy {
            disable_after_ms: None,
            ..p
        };
        b.failed(1, "500", None, false, &never);
        assert!(!b.should_disable(i64::MAX / 2, &never));
    }
}
