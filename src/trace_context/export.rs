//! Export of delivery attempt spans over OTLP/HTTP (SPEC §12), on when APP_OTLP_ENDPOINT
//! names a collector.
//!
//! Spans go through `opentelemetry_sdk`'s batch processor: a thread of its own that sends
//! a batch every `OTEL_BSP_SCHEDULE_DELAY` (5 s by default) or when 512 are waiting, and
//! drops spans beyond `OTEL_BSP_MAX_QUEUE_SIZE` (2,048) rather than hold memory or slow a
//! delivery. A collector that is down, slow or refusing costs lost spans, never a callback:
//! nothing on the delivery path waits for it.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{Request, Response};
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// How long one export may take before its batch is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the shutdown waits for the last spans to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter of one running service, and the tracer its delivery attempts are recorded
/// with.
#[derive(Clone)]
pub struct SpanExport {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl fmt::Debug for SpanExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpanExport")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the OTLP exporter could not be set up: {0}")]
pub struct ExportError(String);

impl SpanExport {
    /// Exports to `endpoint` (the collector's full traces URL) as the service instance
    /// `instance`. Must be called within the Tokio runtime: exports are sent on it.
    pub fn start(endpoint: &str, instance: &str) -> Result<Self, ExportError> {
        let client = ExportClient {
            http: reqwest::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| ExportError(e.to_string()))?,
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|e| ExportError(e.to_string()))?,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| ExportError(e.to_string()))?;
        // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the builder; without
        // them the service is `syncasync`, not the SDK's `unknown_service`.
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(env!("CARGO_PKG_NAME"));
        }
        let resource = resource
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", instance.to_string()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
        Ok(Self { provider, tracer })
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Sends the spans still waiting, for at most [`FLUSH_TIMEOUT`]; run at shutdown.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "the last spans were not exported"),
            Err(err) => tracing::warn!(error = %err, "the span exporter's shutdown failed"),
        }
    }
}

/// The exporter's HTTP client: the batch processor's thread hands each export to the
/// service's runtime, so it shares the process's TLS set-up and adds no second HTTP stack.
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExportClient")
    }
}

#[async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let response = http.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = sent.await??;
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}
