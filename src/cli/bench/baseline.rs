//! The baseline: the same client and payloads against a bare endpoint in process that only
//! reads the body, i.e. what this machine can exchange at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderValue, header};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::BenchArgs;
use super::load::{LoadPlan, drive};
use super::payload::PayloadPool;
use super::report::Phase;

/// What the bare baseline endpoint answers: about the size of the router's own 200.
const BARE_ANSWER: &str = r#"{"success":true,"eventId":"00000000-0000-7000-8000-000000000000","processed":true,"routed":true,"timestamp":1764170000123}"#;

/// The baseline: a bare endpoint in process that reads the body and answers 200.
pub(super) async fn run_baseline(
    args: &BenchArgs,
    pool: &Arc<PayloadPool>,
    plan: &LoadPlan,
    progress: bool,
) -> anyhow::Result<Phase> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let app = Router::new().fallback(bare);
    let token = stop.clone();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    // The ceiling is how fast this client and machine can exchange these requests at all: closed
    // loop for a fixed time, whatever the router run's count or rate.
    let baseline_plan = LoadPlan {
        total: None,
        duration: Some(Duration::from_secs_f64(args.baseline_secs.max(0.1))),
        rate: None,
        concurrency: plan.concurrency,
    };
    let url: reqwest::Url = format!("http://{addr}/webhook/github").parse()?;
    let load = drive(
        std::slice::from_ref(&url),
        pool,
        &baseline_plan,
        Instant::now(),
        false,
        progress.then_some("baseline"),
    )
    .await?;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
    Ok(load.phase)
}

async fn bare(_body: Bytes) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        BARE_ANSWER,
    )
}
