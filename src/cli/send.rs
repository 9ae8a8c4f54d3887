//! `event-router send SOURCE`: signs and posts a test webhook exactly as the provider would.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::clock::now_ms;
use crate::providers::{self, Outgoing, Provider, SendOptions};

#[derive(Debug, Clone)]
pub struct SendArgs {
    pub source: String,
    /// The provider of a source declared in a config file (`--scheme`; built-ins know their own).
    pub scheme: Option<&'static dyn Provider>,
    pub event: Option<String>,
    pub file: Option<PathBuf>,
    pub secret: Option<String>,
    pub url: String,
    /// `--public-url`: the URL the router's source is configured with (`public_url`), which
    /// providers that sign the URL sign; default: where the request is posted.
    pub public_url: Option<String>,
}

/// Where the source's secret is read from: the built-in source's variables, else
/// `<SOURCE>_WEBHOOK_SECRET`.
fn default_secret_env(provider: &dyn Provider, source: &str) -> Vec<String> {
    match provider.builtin() {
        Some(b) if b.source == source => b.secret_env.iter().map(|s| s.to_string()).collect(),
        _ => vec![format!(
            "{}_WEBHOOK_SECRET",
            source.to_ascii_uppercase().replace('-', "_")
        )],
    }
}

/// The request to send: headers and body, signed.
pub type Prepared = Outgoing;

/// Builds and signs the request as the provider would. `secret` is the first of the source's
/// secrets; `agent_key` is used for `internal` when no secret is known.
pub fn prepare(
    provider: &dyn Provider,
    event: Option<&str>,
    body: Vec<u8>,
    secret: Option<&str>,
    agent_key: Option<&str>,
) -> anyhow::Result<Prepared> {
    prepare_at(provider, event, body, secret, agent_key, None)
}

/// `prepare` for a request the provider would have sent to `url` (providers that sign the URL
/// sign it, and may add to its query).
pub fn prepare_at(
    provider: &dyn Provider,
    event: Option<&str>,
    body: Vec<u8>,
    secret: Option<&str>,
    agent_key: Option<&str>,
    url: Option<String>,
) -> anyhow::Result<Prepared> {
    let is_json = serde_json::from_slice::<Value>(&body).is_ok();
    let content_type = if is_json {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let mut out = Outgoing {
        headers: Vec::new(),
        body,
        url,
    };
    out.header("content-type", content_type);
    let opts = SendOptions {
        event,
        secret,
        agent_key,
        now_ms: now_ms(),
    };
    provider.compose(&mut out, &opts)?;
    provider.sign(&mut out, &opts)?;
    Ok(out)
}

/// Runs the command; `Ok(true)` when the router answered 2xx.
pub async fn send(args: SendArgs) -> anyhow::Result<bool> {
    // A source declared in the config file (`EVENT_ROUTER_CONFIG`): its provider, a recipe
    // included, and its secret.
    let declared = (args.scheme.is_none() && providers::by_source(&args.source).is_none())
        .then(|| crate::config::Config::load(&Default::default(), &crate::config::process_env).ok())
        .flatten()
        .and_then(|c| c.sources.get(&args.source).cloned());
    let provider = match args
        .scheme
        .or_else(|| providers::by_source(&args.source))
        .or(declared.as_ref().map(|s| s.provider))
    {
        Some(p) => p,
        None => {
            let names: Vec<&str> = providers::PROVIDERS.iter().map(|p| p.name()).collect();
            bail!(
                "unknown source {:?}: pass --scheme {} for a source declared in the config file",
                args.source,
                names.join("|")
            )
        }
    };
    let body = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        Some(_) => read_stdin()?,
        None if !std::io::stdin().is_terminal() => {
            let b = read_stdin()?;
            if b.is_empty() {
                provider.sample().as_bytes().to_vec()
            } else {
                b
            }
        }
        None => provider.sample().as_bytes().to_vec(),
    };
    let secret = args
        .secret
        .clone()
        .or_else(|| {
            declared
                .as_ref()
                .and_then(|s| s.secret.as_ref())
                .map(|s| s.0.clone())
        })
        .or_else(|| {
            default_secret_env(provider, &args.source)
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        });
    // A rotation list: providers sign with one secret, the first.
    let secret = secret.map(|s| s.split(',').next().unwrap_or("").trim().to_string());
    let agent_key = std::env::var("AGENT_API_KEY")
        .ok()
        .filter(|s| !s.is_empty());
    let target = format!("{}/webhook/{}", args.url.trim_end_matches('/'), args.source);
    let prepared = prepare_at(
        provider,
        args.event.as_deref(),
        body,
        secret.as_deref(),
        agent_key.as_deref(),
        Some(args.public_url.clone().unwrap_or_else(|| target.clone())),
    )?;
    // The query the signed URL ended up with (Twilio's `bodySHA256`) goes with the request.
    let url = match prepared
        .url
        .as_deref()
        .and_then(providers::signed_url::query_of)
    {
        Some(q) if !target.contains('?') => format!("{target}?{q}"),
        _ => target,
    };
    let client = reqwest::Client::new();
    let mut req = client.post(&url);
    for (k, v) in &prepared.headers {
        req = req.header(k, v);
    }
    let resp = req
        .body(prepared.body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("{} {}", status.as_u16(), text);
    Ok(status.is_success())
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut b = Vec::new();
    std::io::stdin()
        .read_to_end(&mut b)
        .context("cannot read stdin")?;
    Ok(b)
}

/// The command: exits 0 when the router answered 2xx, 2 for a bad `--scheme`, else 1.
pub fn main(
    source: String,
    scheme: Option<String>,
    event: Option<String>,
    file: Option<PathBuf>,
    secret: Option<String>,
    url: String,
    public_url: Option<String>,
) -> ExitCode {
    let scheme = match scheme.as_deref().map(providers::by_name) {
        Some(None) => {
            eprintln!("event-router: --scheme must be {}", providers::names_text());
            return ExitCode::from(2);
        }
        Some(s) => s,
        None => None,
    };
    let args = SendArgs {
        source,
        scheme,
        event,
        file,
        secret,
        url,
        public_url,
    };
    let rt = match super::current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(send(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("event-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{SecretSet, github};

    #[test]
    fn prepared_requests_verify_with_our_verifiers() {
        let gh = providers::by_source("github").unwrap();
        let body = gh.sample().as_bytes().to_vec();
        let p = prepare(gh, Some("pull_request"), body, Some("s3cret"), None).unwrap();
        let sig = p
            .headers
            .iter()
            .find(|(k, _)| k == "x-hub-signature-256")
            .unwrap();
        let set = SecretSet::hmac_from_list("s3cret").unwrap();
        assert!(github::verify(&set, Some(sig.1.as_bytes()), &p.body).is_ok());

        let linear = providers::by_source("linear").unwrap();
        let p = prepare(
            linear,
            None,
            linear.sample().as_bytes().to_vec(),
            Some("lin"),
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert!((v["webhookTimestamp"].as_i64().unwrap() - now_ms()).abs() < 5000);
        assert!(prepare(gh, None, b"{}".to_vec(), None, None).is_err());
        let standard = providers::by_name("standard").unwrap();
        let p = prepare(standard, Some("x"), b"{}".to_vec(), None, Some("k")).unwrap();
        assert!(
            p.headers
                .contains(&("authorization".into(), "Bearer k".into()))
        );
    }

    #[test]
    fn secret_variables_come_from_the_registry() {
        let slack = providers::by_name("slack").unwrap();
        assert_eq!(
            default_secret_env(slack, "slack"),
            ["SLACK_WEBHOOK_SECRET", "SLACK_SIGNING_SECRET"]
        );
        let standard = providers::by_name("standard").unwrap();
        assert_eq!(
            default_secret_env(standard, "internal"),
            ["INTERNAL_WEBHOOK_SECRET"]
        );
        assert_eq!(
            default_secret_env(standard, "ci-builds"),
            ["CI_BUILDS_WEBHOOK_SECRET"]
        );
        assert_eq!(
            default_secret_env(slack, "github"),
            ["GITHUB_WEBHOOK_SECRET"]
        );
    }
}
