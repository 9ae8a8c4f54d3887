//! The dashboard's files, embedded at compile time from `dashboard/` in the crate: plain HTML,
//! CSS and JavaScript modules, with no build step, so what is in the repository is what runs.

use std::sync::OnceLock;

pub struct Asset {
    /// The path under `/dashboard/`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
        Asset {
            name,
            content_type,
            body,
            etag: OnceLock::new(),
        }
    }

    /// A strong validator: a hash of the content, computed once.
    pub fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let d = ring::digest::digest(&ring::digest::SHA256, self.body);
            format!("\"{}\"", hex::encode(&d.as_ref()[..12]))
        })
    }
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset::new(
            $name,
            $type,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/", $name)),
        )
    };
}

pub static INDEX: Asset = asset!("index.html", HTML);

static FILES: [Asset; 15] = [
    asset!("app.css", CSS),
    asset!("icon.svg", SVG),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("chart.js", JS),
    asset!("forms.js", JS),
    asset!("overview.js", JS),
    asset!("live.js", JS),
    asset!("event.js", JS),
    asset!("dlq.js", JS),
    asset!("agents.js", JS),
    asset!("routes.js", JS),
    asset!("filters.js", JS),
    asset!("ratelimits.js", JS),
];

/// The embedded file at `/dashboard/{name}`.
pub fn find(name: &str) -> Option<&'static Asset> {
    FILES.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        // Each `from "./x.js"` in an embedded script names an embedded file, and the page's
        // own references resolve: a missing file would only show in a browser otherwise.
        let mut referenced = Vec::new();
        for a in FILES.iter().chain(std::iter::once(&INDEX)) {
            let text = std::str::from_utf8(a.body).unwrap();
            for part in text.split("from \"./").skip(1) {
                referenced.push(part.split('"').next().unwrap().to_string());
            }
        }
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for part in html.split("\"/dashboard/").skip(1) {
            referenced.push(part.split('"').next().unwrap().to_string());
        }
        assert!(!referenced.is_empty());
        for name in referenced {
            assert!(
                find(&name).is_some(),
                "{name} is referenced but not embedded"
            );
        }
    }

    #[test]
    fn no_inline_script_or_style() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        assert!(
            !html.contains("<script>"),
            "inline scripts are refused by the CSP"
        );
        assert!(
            !html.contains("style="),
            "inline styles are refused by the CSP"
        );
        assert!(
            !html.contains("<style"),
            "inline styles are refused by the CSP"
        );
    }
}
