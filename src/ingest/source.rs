//! A source as ingest uses it: its provider, with its secrets parsed and its probe built once at
//! start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::SourceConfig;
use crate::event::ProbeSpec;
use crate::providers::{Provider, Secrets};

pub struct Source {
    pub name: String,
    pub provider: &'static dyn Provider,
    /// `None`: no secret configured (the source is disabled, `internal` aside).
    pub secrets: Option<Secrets>,
    pub identifier_field: Option<String>,
    /// The URL the provider was given (`public_url`), for providers that sign it.
    pub public_url: Option<String>,
    /// The token of the provider's `GET` check of the endpoint (Meta), when it has one.
    pub verify_token: Option<String>,
    /// Headers never kept in an event's `metadata.headers`: every provider's signature headers,
    /// those of the config's recipes included (`build_sources`), whichever source they arrive on.
    pub hidden_headers: Arc<[&'static str]>,
    /// The payload fields ingest reads for this source's provider and identifier path.
    pub probe: ProbeSpec,
}

impl Source {
    /// Parses the source's secret list; a list that does not parse is a startup error.
    pub fn from_config(name: &str, cfg: &SourceConfig) -> Result<Source, String> {
        let secrets = match &cfg.secret {
            None => None,
            Some(s) => Some(cfg.provider.parse_secrets(&s.0).map_err(|e| {
                format!(
                    "source {name}: the secret in {} is not usable: {e}",
                    cfg.secret_env.join(" / ")
                )
            })?),
        };
        Ok(
            Source::new(name, cfg.provider, secrets, cfg.identifier_field.clone())
                .with_public_url(cfg.public_url.clone())
                .with_verify_token(cfg.verify_token.as_ref().map(|t| t.0.clone())),
        )
    }

    pub fn new(
        name: &str,
        provider: &'static dyn Provider,
        secrets: Option<Secrets>,
        identifier_field: Option<String>,
    ) -> Source {
        // The provider's second place for the identifier goes with its own first one only.
        let default = provider.builtin().and_then(|b| b.identifier);
        let alternate = provider
            .identifier_alternate()
            .filter(|_| identifier_field.is_some() && identifier_field.as_deref() == default);
        Source {
            name: name.to_string(),
            provider,
            secrets,
            probe: ProbeSpec::with_alternate(
                provider.probes(),
                identifier_field.as_deref(),
                alternate,
            ),
            identifier_field,
            public_url: None,
            verify_token: None,
            hidden_headers: hidden_headers([provider]),
        }
    }

    pub fn with_public_url(mut self, public_url: Option<String>) -> Source {
        self.public_url = public_url;
        self
    }

    pub fn with_verify_token(mut self, verify_token: Option<String>) -> Source {
        self.verify_token = verify_token;
        self
    }
}

/// The catalog's signature headers and those of `more` providers (recipes), sorted.
fn hidden_headers<'p>(more: impl IntoIterator<Item = &'p dyn Provider>) -> Arc<[&'static str]> {
    let mut all: Vec<&'static str> = crate::providers::signature_headers().to_vec();
    for p in more {
        all.extend_from_slice(p.signature_headers());
    }
    all.sort_unstable();
    all.dedup();
    all.into()
}

/// The sources known at start, keyed by name.
pub fn build_sources(
    sources: &BTreeMap<String, SourceConfig>,
) -> Result<HashMap<String, Arc<Source>>, String> {
    let hidden = hidden_headers(sources.values().map(|s| s.provider));
    sources
        .iter()
        .map(|(name, cfg)| {
            let mut source = Source::from_config(name, cfg)?;
            source.hidden_headers = hidden.clone();
            Ok((name.clone(), Arc::new(source)))
        })
        .collect()
}
