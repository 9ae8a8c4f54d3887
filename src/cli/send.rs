//! `event-router send SOURCE`: signs and posts a test webhook exactly as the provider would.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::clock::now_ms;
use crate::config::Scheme;
use crate::ingest::verify;

#[derive(Debug, Clone)]
pub struct SendArgs {
    pub source: String,
    /// Signature scheme for a source declared in a config file (built-ins know their own).
    pub scheme: Option<Scheme>,
    pub event: Option<String>,
    pub file: Option<PathBuf>,
    pub secret: Option<String>,
    pub url: String,
}

/// A built-in sample body per scheme, used when neither `--file` nor piped stdin is given.
fn sample(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Github => include_str!("../../examples/github-pull_request.json"),
        Scheme::Linear => include_str!("../../examples/linear-issue.json"),
        Scheme::Slack => include_str!("../../examples/slack-message.json"),
        Scheme::Standard => include_str!("../../examples/internal-build.json"),
    }
}

fn scheme_of(source: &str) -> Option<Scheme> {
    match source {
        "github" => Some(Scheme::Github),
        "linear" => Some(Scheme::Linear),
        "slack" => Some(Scheme::Slack),
        "internal" => Some(Scheme::Standard),
        _ => None,
    }
}

fn default_secret_env(scheme: Scheme, source: &str) -> Vec<String> {
    match (scheme, source) {
        (Scheme::Github, "github") => vec!["GITHUB_WEBHOOK_SECRET".into()],
        (Scheme::Linear, "linear") => vec!["LINEAR_WEBHOOK_SECRET".into()],
        (Scheme::Slack, "slack") => {
            vec!["SLACK_WEBHOOK_SECRET".into(), "SLACK_SIGNING_SECRET".into()]
        }
        (Scheme::Standard, "internal") => vec!["INTERNAL_WEBHOOK_SECRET".into()],
        _ => vec![format!(
            "{}_WEBHOOK_SECRET",
            source.to_ascii_uppercase().replace('-', "_")
        )],
    }
}

/// The request to send: headers and body, signed.
#[derive(Debug)]
pub struct Prepared {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Builds and signs the request as the provider would. `secret` is the first of the source's
/// secrets; `agent_key` is used for `internal` when no secret is known.
pub fn prepare(
    scheme: Scheme,
    event: Option<&str>,
    body: Vec<u8>,
    secret: Option<&str>,
    agent_key: Option<&str>,
) -> anyhow::Result<Prepared> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let is_json = serde_json::from_slice::<Value>(&body).is_ok();
    let content_type = if is_json {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    headers.push(("content-type".into(), content_type.into()));
    let need = |s: Option<&str>| -> anyhow::Result<String> {
        s.map(str::to_string)
            .context("no secret: pass --secret or set the source's secret variable")
    };
    let now = now_ms();
    let body = match scheme {
        Scheme::Github => {
            let secret = need(secret)?;
            headers.push((
                "user-agent".into(),
                "GitHub-Hookshot/event-router-send".into(),
            ));
            headers.push(("x-github-event".into(), event.unwrap_or("ping").into()));
            headers.push(("x-github-delivery".into(), uuid::Uuid::new_v4().to_string()));
            headers.push((
                "x-hub-signature-256".into(),
                verify::sign_github(secret.as_bytes(), &body),
            ));
            body
        }
        Scheme::Linear => {
            let secret = need(secret)?;
            // Linear stamps each send with webhookTimestamp in the body.
            let mut v: Value =
                serde_json::from_slice(&body).context("a Linear body must be a JSON object")?;
            let Value::Object(m) = &mut v else {
                bail!("a Linear body must be a JSON object");
            };
            if let Some(t) = event {
                m.insert("type".into(), Value::String(t.into()));
            }
            m.insert("webhookTimestamp".into(), Value::from(now));
            let body = serde_json::to_vec(&v)?;
            headers.push((
                "linear-event".into(),
                m_type(&v).unwrap_or_default().to_string(),
            ));
            headers.push(("linear-delivery".into(), uuid::Uuid::new_v4().to_string()));
            headers.push((
                "linear-signature".into(),
                verify::sign_linear(secret.as_bytes(), &body),
            ));
            body
        }
        Scheme::Slack => {
            let secret = need(secret)?;
            let ts = now / 1000;
            headers.push(("x-slack-request-timestamp".into(), ts.to_string()));
            headers.push((
                "x-slack-signature".into(),
                verify::sign_slack(secret.as_bytes(), ts, &body),
            ));
            body
        }
        Scheme::Standard => {
            if let Some(t) = event {
                headers.push(("x-event-type".into(), t.into()));
            }
            let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
            headers.push(("webhook-id".into(), id.clone()));
            match (secret, agent_key) {
                (Some(secret), _) => {
                    let ts = now / 1000;
                    let signer = verify::StandardSigner::from_secret(secret).map_err(|e| {
                        anyhow::anyhow!("the secret is not a Standard Webhooks secret: {e}")
                    })?;
                    headers.push(("webhook-timestamp".into(), ts.to_string()));
                    headers.push(("webhook-signature".into(), signer.sign(&id, ts, &body)));
                }
                (None, Some(key)) => {
                    headers.push(("authorization".into(), format!("Bearer {key}")))
                }
                (None, None) => bail!(
                    "no secret: pass --secret, or set INTERNAL_WEBHOOK_SECRET or AGENT_API_KEY"
                ),
            }
            body
        }
    };
    Ok(Prepared { headers, body })
}

fn m_type(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// Runs the command; `Ok(true)` when the router answered 2xx.
pub async fn send(args: SendArgs) -> anyhow::Result<bool> {
    let scheme = match args.scheme.or_else(|| scheme_of(&args.source)) {
        Some(s) => s,
        None => bail!(
            "unknown source {:?}: pass --scheme github|linear|slack|standard for a source declared in the config file",
            args.source
        ),
    };
    let body = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        Some(_) => read_stdin()?,
        None if !std::io::stdin().is_terminal() => {
            let b = read_stdin()?;
            if b.is_empty() {
                sample(scheme).as_bytes().to_vec()
            } else {
                b
            }
        }
        None => sample(scheme).as_bytes().to_vec(),
    };
    let secret = args.secret.clone().or_else(|| {
        default_secret_env(scheme, &args.source)
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    });
    // A rotation list: providers sign with one secret, the first.
    let secret = secret.map(|s| s.split(',').next().unwrap_or("").trim().to_string());
    let agent_key = std::env::var("AGENT_API_KEY")
        .ok()
        .filter(|s| !s.is_empty());
    let prepared = prepare(
        scheme,
        args.event.as_deref(),
        body,
        secret.as_deref(),
        agent_key.as_deref(),
    )?;
    let url = format!("{}/webhook/{}", args.url.trim_end_matches('/'), args.source);
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
) -> ExitCode {
    let scheme = match scheme.as_deref().map(Scheme::parse) {
        Some(None) => {
            eprintln!("event-router: --scheme must be github, linear, slack or standard");
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

    #[test]
    fn prepared_requests_verify_with_our_verifiers() {
        let body = sample(Scheme::Github).as_bytes().to_vec();
        let p = prepare(
            Scheme::Github,
            Some("pull_request"),
            body,
            Some("s3cret"),
            None,
        )
        .unwrap();
        let sig = p
            .headers
            .iter()
            .find(|(k, _)| k == "x-hub-signature-256")
            .unwrap();
        let set = verify::SecretSet::hmac_from_list("s3cret").unwrap();
        assert!(verify::verify_github(&set, Some(sig.1.as_bytes()), &p.body).is_ok());

        let p = prepare(
            Scheme::Linear,
            None,
            sample(Scheme::Linear).as_bytes().to_vec(),
            Some("lin"),
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert!((v["webhookTimestamp"].as_i64().unwrap() - now_ms()).abs() < 5000);
        assert!(prepare(Scheme::Github, None, b"{}".to_vec(), None, None).is_err());
        let p = prepare(Scheme::Standard, Some("x"), b"{}".to_vec(), None, Some("k")).unwrap();
        assert!(
            p.headers
                .contains(&("authorization".into(), "Bearer k".into()))
        );
    }
}
