//! The API's error type: every failure leaves as `{"success": false, "error", "code"}`.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ingest::IngestError;
use crate::store::StoreError;

/// A failed request, in the contract's JSON form. Client mistakes carry their own message;
/// internal failures are logged with context and answered with an opaque 500.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The offending field of a validation error, when there is one.
    pub field: Option<String>,
    /// Line and column (1-based) in the request's JSON body of a syntax error or of a value of
    /// the wrong type: answered as `"line"` and `"column"`.
    /// (`u32`, as `ApiError` is the error of every handler and is kept small.)
    pub position: Option<(u32, u32)>,
    /// Every problem of a validation error, the first being `field`'s: answered as `"errors"`.
    pub errors: Option<Box<Problems>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A validation error's problems, `[{"field", "error", "line"?, "column"?}]`, each `error`
/// without its field's prefix. Boxed in `ApiError` (the error of every handler) to keep it small.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<serde_json::Value>);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            position: None,
            errors: None,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    /// `400 validation_error` naming `field`; an empty field (the body as a whole is at fault)
    /// is named `body`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut field = field.into();
        if field.is_empty() {
            field = "body".into();
        }
        let message = message.into();
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "validation_error",
            format!("{field}: {message}"),
        );
        e.errors = Some(Box::new(Problems(vec![
            json!({"field": field, "error": message}),
        ])));
        e.field = Some(field);
        e
    }

    /// `400 validation_error` with every problem in `problems` (field, message, position):
    /// the first is the answer's `field` and `error`, all of them are its `errors`. `None`
    /// when there is no problem.
    pub fn validations(
        problems: impl IntoIterator<Item = (String, String, Option<(usize, usize)>)>,
    ) -> Option<Self> {
        let mut out: Option<Self> = None;
        for (field, message, position) in problems {
            let one = Self::validation_at(field, message, position);
            match &mut out {
                None => out = Some(one),
                Some(e) => {
                    if let (Some(all), Some(more)) = (&mut e.errors, one.errors) {
                        all.0.extend(more.0);
                    }
                }
            }
        }
        out
    }

    /// A validation error at a place in the JSON body: the message ends with it, and the answer
    /// carries it as `"line"` and `"column"`.
    pub fn validation_at(
        field: impl Into<String>,
        message: impl Into<String>,
        position: Option<(usize, usize)>,
    ) -> Self {
        let message = message.into();
        match position {
            Some((line, column)) => {
                let mut e =
                    Self::validation(field, format!("{message} at line {line}, column {column}"));
                let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                e.position = Some((narrow(line), narrow(column)));
                for item in e.errors.iter_mut().flat_map(|p| p.0.iter_mut()) {
                    item["line"] = line.into();
                    item["column"] = column.into();
                }
                e
            }
            None => Self::validation(field, message),
        }
    }

    /// A JSON body that could not be read into its shape, by serde_json directly or through
    /// serde_path_to_error (`path`: where, `.` or empty for the body itself). A syntax error
    /// is the body's (`body: invalid JSON: … at line L, column C`); a value of the wrong type
    /// is its field's.
    pub fn json(path: &str, e: &serde_json::Error) -> Self {
        let message = crate::rules::validate::without_position(e);
        // serde_json counts column 0 for the end of the body just after a line break.
        let position = (e.line() > 0).then(|| (e.line(), e.column().max(1)));
        if e.is_syntax() || e.is_eof() {
            return Self::validation_at("body", format!("invalid JSON: {message}"), position);
        }
        // `?`: a place serde_path_to_error could not name.
        let path = if path == "." || path == "?" { "" } else { path };
        Self::validation_at(
            path,
            crate::rules::validate::plain_words(&message),
            position,
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid API key is required (Authorization: Bearer <key>)",
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// Something broke on our side: logged in full, answered without detail.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal server error",
        )
    }
}

/// Seconds a client is asked to wait when the store cannot write.
const STORAGE_RETRY_AFTER: &str = "5";

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => {
                ApiError::unavailable("shutting_down", "The server is shutting down")
            }
            StoreError::Unavailable(reason) => {
                // The store logs the fault once (`the store cannot write`); a line per refused
                // request would flood the log at webhook rates for as long as the fault lasts.
                tracing::debug!(error = %reason, "request refused: the store cannot write");
                ApiError::unavailable(
                    "storage_unavailable",
                    "The storage cannot write right now; nothing was stored, retry later",
                )
                .with_header(
                    axum::http::header::RETRY_AFTER,
                    HeaderValue::from_static(STORAGE_RETRY_AFTER),
                )
            }
            other => ApiError::internal("store failure", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"success": false, "error": self.message, "code": self.code});
        if let Some(f) = self.field {
            body["field"] = serde_json::Value::String(f);
        }
        if let Some((line, column)) = self.position {
            body["line"] = line.into();
            body["column"] = column.into();
        }
        if let Some(problems) = self.errors {
            body["errors"] = serde_json::Value::Array(problems.0);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

impl ApiError {
    /// The error as a whole HTTP/1.1 answer that closes the connection, for refusals written
    /// straight to a socket where no handler runs: a connection past a cap, or a request head
    /// hyper could not parse.
    pub fn to_http1(&self) -> Vec<u8> {
        let body = json!({"success": false, "error": self.message, "code": self.code}).to_string();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\ndate: {}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len(),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        )
        .into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        out
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// An admin body's JSON syntax, checked before any field is read, so that a body cut short or
/// with trailing text is reported as that, at its line and column, and not as a missing field.
pub fn json_syntax(body: &[u8]) -> ApiResult<()> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::validation(
            "body",
            "is empty (expected a JSON object)",
        ));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| ApiError::json("", &e))
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        use axum::http::header;
        let message = e.to_string();
        match e {
            IngestError::UnknownSource(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_source", message)
            }
            IngestError::SourceNotConfigured(_) => {
                ApiError::unavailable("source_not_configured", message)
            }
            IngestError::PayloadTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            IngestError::UnreadableBody | IngestError::InvalidBody(_) => {
                ApiError::invalid_body(message)
            }
            IngestError::InvalidSignature | IngestError::MissingTimestamp(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message)
            }
            IngestError::StaleTimestamp => {
                ApiError::new(StatusCode::UNAUTHORIZED, "stale_timestamp", message)
            }
            IngestError::RateLimited { headers, .. } => {
                let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
                for (k, v) in headers {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        err = err.with_header(HeaderName::from_static(k), v);
                    }
                }
                err
            }
            IngestError::QueueFull => ApiError::unavailable("queue_full", message)
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")),
            IngestError::Store(e) => e.into(),
            IngestError::Internal { context, detail } => ApiError::internal(context, detail),
        }
    }
}

/// Every refusal in the contract's envelope: an error answer that is not JSON (the plain-text
/// rejections axum's extractors write, such as `413 Failed to buffer the request body` for an
/// admin body over the limit, or an empty error body) is rewritten as
/// `{"success": false, "error", "code"}` with the same status and headers. JSON answers,
/// successes and answers to `HEAD` pass untouched.
pub async fn envelope(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let head = req.method() == axum::http::Method::HEAD;
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if head || json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // What the rejection said, if it is short text; else the status's own words.
    let text = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
    let said = String::from_utf8_lossy(&text).trim().to_string();
    let message = if said.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("Request refused")
            .to_string()
    } else {
        said
    };
    let code = match status.as_u16() {
        400 | 422 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        431 => "headers_too_large",
        s if s >= 500 => "internal_error",
        _ => "bad_request",
    };
    let fresh = ApiError::new(status, code, message).into_response();
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.extend(fresh_parts.headers);
    Response::from_parts(parts, body)
}
