//! `GET /admin/sources`: the sources webhooks can be posted to, with whether each is enabled and
//! where its secret is read from, for an operator setting up providers (the dashboard's
//! first-start guide).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::http::AppState;

pub async fn list(State(app): State<AppState>) -> Json<Value> {
    let items: Vec<Value> = app
        .config
        .sources
        .iter()
        .map(|(name, cfg)| {
            json!({
                "name": name,
                "scheme": cfg.provider.name(),
                "enabled": app.ingest.source(name).is_ok(),
                "secretEnv": cfg.secret_env,
                "webhookPath": format!("/webhook/{name}"),
            })
        })
        .collect();
    Json(json!({ "items": items, "nextCursor": null }))
}
