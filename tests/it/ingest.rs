//! Ingest through the real server.

use crate::support::*;

#[tokio::test]
async fn signed_github_webhook_is_stored_and_readable() {
    let app = TestApp::spawn().await;
    let body = include_bytes!("../../examples/github-pull_request.json");
    let r = app.post_github("pull_request", body).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["success"], true);
    let id = v["eventId"].as_str().unwrap().to_string();
    let (status, got) = app.admin_get(&format!("/admin/events/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["event"]["type"], "pull_request");
    assert_eq!(got["event"]["metadata"]["identifier"], "octocat");
    app.stop().await;
}
