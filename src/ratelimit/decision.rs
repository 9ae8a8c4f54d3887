//! The outcome of one rate-limit check and the HTTP headers that report it.

/// What a check decided, with everything the 429 answer and the
/// `X-RateLimit-*` headers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The most requests the key could have available at once (for a token
    /// bucket that is its capacity, `burst`), so `remaining <= limit` always.
    pub limit: u64,
    /// Requests still available right now after this one; 0 when refused.
    pub remaining: u64,
    /// Epoch ms; the meaning per strategy is in `docs/rate-limits.md`.
    pub reset_at_ms: u64,
    /// 0 when allowed; otherwise how long until a request would be allowed.
    pub retry_after_ms: u64,
}

impl Decision {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
    /// (epoch seconds, rounded up so a client waiting until then is not early)
    /// and, when refused, `Retry-After` (seconds, rounded up, at least 1: a
    /// `Retry-After: 0` invites an immediate retry that would be refused again).
    ///
    /// Names are lowercase, as HTTP/2 sends them and `HeaderName::from_static` requires.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + use<> {
        let retry_after = (!self.allowed).then(|| {
            (
                "retry-after",
                self.retry_after_ms.div_ceil(1000).max(1).to_string(),
            )
        });
        [
            Some(("x-ratelimit-limit", self.limit.to_string())),
            Some(("x-ratelimit-remaining", self.remaining.to_string())),
            Some((
                "x-ratelimit-reset",
                self.reset_at_ms.div_ceil(1000).to_string(),
            )),
            retry_after,
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(d: &Decision) -> Vec<(&'static str, String)> {
        d.headers().collect()
    }

    #[test]
    fn allowed_has_no_retry_after_and_rounds_reset_up() {
        let d = Decision {
            allowed: true,
            limit: 10,
            remaining: 7,
            reset_at_ms: 1_764_170_000_001,
            retry_after_ms: 0,
        };
        assert_eq!(
            headers(&d),
            vec![
                ("x-ratelimit-limit", "10".to_string()),
                ("x-ratelimit-remaining", "7".to_string()),
                ("x-ratelimit-reset", "1764170001".to_string()),
            ]
        );
    }

    #[test]
    fn refused_has_retry_after_rounded_up_and_at_least_one() {
        let mut d = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_at_ms: 1_764_170_000_000,
            retry_after_ms: 1_001,
        };
        let h = headers(&d);
        assert_eq!(h[2], ("x-ratelimit-reset", "1764170000".to_string()));
        assert_eq!(h[3], ("retry-after", "2".to_string()));
        d.retry_after_ms = 1;
        assert_eq!(headers(&d)[3], ("retry-after", "1".to_string()));
        d.retry_after_ms = 0;
        assert_eq!(headers(&d)[3], ("retry-after", "1".to_string()));
        d.retry_after_ms = 3_000;
        assert_eq!(headers(&d)[3], ("retry-after", "3".to_string()));
    }
}
