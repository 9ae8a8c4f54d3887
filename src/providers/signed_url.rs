//! The URL a provider called, for the providers that sign it (HubSpot, Square, Twilio).
//!
//! Behind a proxy the router does not see the URL the provider was given: the scheme, host or
//! path may have changed on the way. So a source may say it (`public_url`), and then the signed
//! URL is `public_url`'s scheme, host and path with the query as received (a provider may add to
//! the query, as Twilio's `bodySHA256` does; a proxy keeps it), or `public_url`'s own query when
//! the request has none. Without `public_url` the URL is rebuilt from the request: the `Host`
//! header and the path and query as received, under the scheme `X-Forwarded-Proto` names, or
//! both `https` and `http` when it names neither (the router cannot tell whether TLS ended in
//! front of it). Either way a wrong guess only makes a genuine request fail: a signature still
//! has to match.

use super::{Request, header_str};

/// The URLs the provider may have called, most likely first: one with `public_url` or a known
/// scheme, two when the scheme is a guess; none without `public_url` or a usable `Host` header.
pub fn called_urls(req: &Request<'_>) -> Vec<String> {
    let received_query = req.line.path_and_query.split_once('?').map(|(_, q)| q);
    if let Some(public) = req.public_url {
        let public = public.split_once('#').map_or(public, |(u, _)| u);
        let (base, own_query) = match public.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (public, None),
        };
        return vec![with_query(base, received_query.or(own_query))];
    }
    let Some(host) = header_str(req.headers, "host").filter(|h| usable_host(h)) else {
        return Vec::new();
    };
    let path = req.line.path_and_query;
    let proto = header_str(req.headers, "x-forwarded-proto")
        .and_then(|p| p.split(',').next())
        .map(|p| p.trim().to_ascii_lowercase());
    let schemes: &[&str] = match proto.as_deref() {
        Some("https") => &["https"],
        Some("http") => &["http"],
        _ => &["https", "http"],
    };
    schemes
        .iter()
        .map(|scheme| format!("{scheme}://{host}{path}"))
        .collect()
}

fn with_query(base: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{base}?{q}"),
        None => base.to_string(),
    }
}

/// A `Host` value that can be the authority of a URL (no path, query, user or spaces).
fn usable_host(host: &str) -> bool {
    host.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\'))
}

/// The query string of a URL, if it has one.
pub fn query_of(url: &str) -> Option<&str> {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    url.split_once('?').map(|(_, q)| q)
}

/// The URL `send` signs for: `out.url`, or an error naming what is missing.
pub fn signing_url<'a>(url: Option<&'a str>, provider: &str) -> Result<&'a str, super::SignError> {
    url.ok_or_else(|| {
        super::SignError(format!(
            "{provider} signs the URL it calls: give the URL the router is reached at (send --public-url)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;
    use crate::providers::RequestLine;

    fn urls(public_url: Option<&str>, path: &str, headers: &[(&'static str, &str)]) -> Vec<String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        let req = Request {
            source: "s",
            line: RequestLine::post(path),
            public_url,
            headers: &map,
            body: b"",
            now_ms: 0,
            agent_key: &|_| false,
        };
        called_urls(&req)
    }

    #[test]
    fn public_url_gives_scheme_host_and_path_and_the_request_the_query() {
        let public = Some("https://hooks.example.com/in/square");
        assert_eq!(
            urls(public, "/webhook/square", &[("host", "10.0.0.5:8787")]),
            ["https://hooks.example.com/in/square"]
        );
        assert_eq!(
            urls(public, "/webhook/twilio?bodySHA256=ab", &[]),
            ["https://hooks.example.com/in/square?bodySHA256=ab"]
        );
        let with_query = Some("https://hooks.example.com/in?tenant=1#frag");
        assert_eq!(
            urls(with_query, "/webhook/x", &[]),
            ["https://hooks.example.com/in?tenant=1"]
        );
        assert_eq!(
            urls(with_query, "/webhook/x?tenant=1&b=2", &[]),
            ["https://hooks.example.com/in?tenant=1&b=2"]
        );
    }

    #[test]
    fn without_public_url_the_host_header_and_forwarded_proto() {
        assert_eq!(
            urls(
                None,
                "/webhook/square?a=1",
                &[("host", "router.example.com")]
            ),
            [
                "https://router.example.com/webhook/square?a=1",
                "http://router.example.com/webhook/square?a=1"
            ]
        );
        assert_eq!(
            urls(
                None,
                "/webhook/square",
                &[
                    ("host", "r.example.com:8443"),
                    ("x-forwarded-proto", "HTTPS, http")
                ]
            ),
            ["https://r.example.com:8443/webhook/square"]
        );
        assert_eq!(
            urls(
                None,
                "/webhook/square",
                &[("host", "r.example.com"), ("x-forwarded-proto", "http")]
            ),
            ["http://r.example.com/webhook/square"]
        );
        assert!(urls(None, "/webhook/square", &[]).is_empty());
        for bad in ["a/b", "user@host", "a b", "h?x"] {
            assert!(urls(None, "/w", &[("host", bad)]).is_empty(), "{bad}");
        }
    }

    #[test]
    fn queries() {
        assert_eq!(query_of("https://a/b?x=1#f"), Some("x=1"));
        assert_eq!(query_of("https://a/b"), None);
        assert!(signing_url(None, "square").is_err());
        assert_eq!(
            signing_url(Some("https://a"), "square").unwrap(),
            "https://a"
        );
    }
}
