//! The OTLP trace exporter, configured by the standard OpenTelemetry environment variables.
//!
//! Read here: whether to export at all (`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`, an
//! endpoint) and the protocol. Read by the SDK itself: the endpoint, headers, timeout and
//! compression (`OTEL_EXPORTER_OTLP_*`, with their `_TRACES_` variants), the sampler
//! (`OTEL_TRACES_SAMPLER`, `_ARG`), the resource (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`) and the batching (`OTEL_BSP_*`).

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Where traces go, for the start-up log line: the protocol and the endpoint's host and port
/// (never its credentials, query or headers).
pub(super) fn describe() -> String {
    let protocol = otlp_var("PROTOCOL").unwrap_or_else(|| "http/protobuf".into());
    let endpoint = otlp_var("ENDPOINT")
        .and_then(|e| e.parse::<http::Uri>().ok())
        .and_then(|u| {
            let host = u.host()?.to_string();
            Some(match u.port_u16() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "the default endpoint (localhost)".into());
    format!("{protocol} to {endpoint}")
}

/// The variable for traces, else the general one (`OTEL_EXPORTER_OTLP_TRACES_X`, then
/// `OTEL_EXPORTER_OTLP_X`), as the specification orders them.
fn otlp_var(suffix: &str) -> Option<String> {
    var(&format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"))
        .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
}

/// The tracer provider the environment asks for, or `None`: without an OTLP endpoint (or
/// `OTEL_TRACES_EXPORTER=otlp`), with `OTEL_TRACES_EXPORTER=none` or with
/// `OTEL_SDK_DISABLED=true` nothing is exported. Must run inside a tokio runtime.
pub(super) fn from_env() -> Result<Option<SdkTracerProvider>, String> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint = otlp_var("ENDPOINT");
    match var("OTEL_TRACES_EXPORTER").map(|v| v.to_ascii_lowercase()) {
        Some(v) if v == "none" => return Ok(None),
        // Explicitly asked for: to the default endpoint if none is given.
        Some(v) if v == "otlp" => {}
        Some(v) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={v} is not supported (otlp or none)"
            ));
        }
        None if endpoint.is_none() => return Ok(None),
        None => {}
    }
    let protocol = otlp_var("PROTOCOL").unwrap_or_else(|| "http/protobuf".into());
    let https = endpoint.as_deref().is_some_and(|e| e.starts_with("https:"));
    let exporter = match protocol.as_str() {
        "grpc" => {
            let mut builder = SpanExporter::builder().with_tonic();
            if https {
                use opentelemetry_otlp::WithTonicConfig as _;
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_webpki_roots(),
                );
            }
            builder.build()
        }
        "http/protobuf" => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(http_client(timeout())?)
            .build(),
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (http/protobuf or grpc)"
            ));
        }
    }
    .map_err(|e| e.to_string())?;
    // The exporter's requests run as tasks on the server's runtime: the SDK's default batch
    // processor would run them on a thread of its own, where hyper and tonic have no reactor.
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource())
            .build(),
    ))
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, the SDK's own
/// attributes), named `event-router` unless the environment names the service.
fn resource() -> Resource {
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if named {
        builder.build()
    } else {
        builder.with_service_name("event-router").build()
    }
}

/// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` in milliseconds; 10 s by default.
fn timeout() -> Duration {
    otlp_var("TIMEOUT")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The HTTP client of the `http/protobuf` exporter: hyper over rustls with the built-in
/// (webpki) roots, the stack the router already ships for deliveries, so that an `https://`
/// collector works without a second TLS library or HTTP client.
fn http_client(
    timeout: Duration,
) -> Result<
    opentelemetry_http::hyper::HyperClient<hyper_rustls::HttpsConnector<HttpConnector>>,
    String,
> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(Duration::from_secs(5)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector, timeout, None,
    ))
}
