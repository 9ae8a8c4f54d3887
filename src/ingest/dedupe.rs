//! A bounded memory of recently committed provider delivery ids, so a redelivery is answered as a
//! duplicate before it is rate limited or routed. The store's unique index remains the truth (it
//! catches what this cache has forgotten, e.g. after a restart, or what another node ingested).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use uuid::Uuid;

use crate::event::EventHeader;

/// What a duplicate is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    pub event_id: Uuid,
    pub processed: bool,
    pub routed: bool,
}

/// Stage: an event whose provider delivery id was committed recently is answered with the
/// original event, before it is rate limited or routed.
pub fn dedupe(recent: &RecentDeliveries, head: &EventHeader) -> Option<Original> {
    recent.get(&head.source, head.delivery_id.as_deref()?)
}

pub struct RecentDeliveries {
    // A std Mutex: the critical section is a hash lookup, never held across an await.
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    /// source -> delivery id -> original; nested so lookups borrow `&str` without allocating.
    map: HashMap<Box<str>, HashMap<Box<str>, Original>>,
    order: VecDeque<(Box<str>, Box<str>)>,
}

impl RecentDeliveries {
    pub fn new(capacity: usize) -> Self {
        RecentDeliveries {
            inner: Mutex::new(Inner {
                map: HashMap::with_capacity(capacity.min(1 << 16)),
                order: VecDeque::with_capacity(capacity.min(1 << 16)),
            }),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, source: &str, delivery_id: &str) -> Option<Original> {
        let inner = self.inner.lock().ok()?;
        inner.map.get(source)?.get(delivery_id).copied()
    }

    pub fn insert(&self, source: &str, delivery_id: &str, original: Original) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let per_source = inner.map.entry(source.into()).or_default();
        if per_source.insert(delivery_id.into(), original).is_none() {
            inner.order.push_back((source.into(), delivery_id.into()));
            while inner.order.len() > self.capacity {
                let Some((s, d)) = inner.order.pop_front() else {
                    break;
                };
                if let Some(m) = inner.map.get_mut(&s) {
                    m.remove(&d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets_oldest() {
        let r = RecentDeliveries::new(2);
        let o = |n: u128| Original {
            event_id: Uuid::from_u128(n),
            processed: true,
            routed: false,
        };
        r.insert("github", "a", o(1));
        r.insert("github", "b", o(2));
        assert_eq!(r.get("github", "a"), Some(o(1)));
        assert_eq!(r.get("linear", "a"), None);
        r.insert("github", "c", o(3));
        assert_eq!(r.get("github", "a"), None);
        assert_eq!(r.get("github", "c"), Some(o(3)));
    }
}
