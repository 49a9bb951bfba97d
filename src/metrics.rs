//! Prometheus metrics, served as text at `http://<--metrics-listen>/metrics`.
//! Every name starts with `notigate_`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub connection: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub connection: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendErrorLabels {
    pub backend: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    ])
}

fn call_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub accepted: Family<ConnectionLabels, Counter>,
    pub finished: Family<StateLabels, Counter>,
    pub attempts: Family<OutcomeLabels, Counter>,
    pub delivery_latency: Family<ConnectionLabels, Histogram, fn() -> Histogram>,
    pub backend_errors: Family<BackendErrorLabels, Counter>,
    pub queue_depth: Family<QueueLabels, Gauge>,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("notigate");
        let accepted = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "notifications_accepted",
            "Notifications accepted by Send (durably queued)",
            accepted.clone(),
        );
        let finished = Family::<StateLabels, Counter>::default();
        registry.register(
            "notifications_finished",
            "Notifications that reached a final state (delivered, failed, canceled)",
            finished.clone(),
        );
        let attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by outcome (delivered, transient, permanent)",
            attempts.clone(),
        );
        let delivery_latency =
            Family::<ConnectionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "delivery_latency_seconds",
            "Time from Send to delivery",
            delivery_latency.clone(),
        );
        let backend_errors = Family::<BackendErrorLabels, Counter>::default();
        registry.register(
            "backend_errors",
            "Failed delivery attempts by backend and kind (transient, permanent)",
            backend_errors.clone(),
        );
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Notifications not yet final: waiting (queued or retrying), sending, held (connection disabled)",
            queue_depth.clone(),
        );
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code",
            grpc_requests.clone(),
        );
        let grpc_latency =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                call_histogram,
            );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call latency until the response headers",
            grpc_latency.clone(),
        );
        Self {
            registry,
            accepted,
            finished,
            attempts,
            delivery_latency,
            backend_errors,
            queue_depth,
            grpc_requests,
            grpc_latency,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn observe_call(&self, method: &str, code: &str, elapsed: Duration) {
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.grpc_latency
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// Serves `GET /metrics` on `addr` until the process ends. `refresh` runs
/// before each scrape (gauges computed on demand).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes, service::service_fn};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            let refresh = refresh.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    let refresh = refresh.clone();
                    async move {
                        let response = if req.uri().path() == "/metrics" {
                            refresh();
                            Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(metrics.encode())))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                        };
                        response.map_err(std::io::Error::other)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

/// A tower layer counting gRPC calls by method and status and timing them.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The method label: our services' paths as they are; anything else
/// (unknown paths are attacker-chosen) folded into one label.
fn method_label(path: &str) -> String {
    const KNOWN: [&str; 5] = [
        "/notigate.v1.",
        "/grpc.health.v1.",
        "/grpc.reflection.v1.",
        "/grpc.reflection.v1alpha.",
        "/google.",
    ];
    if KNOWN.iter().any(|p| path.starts_with(p)) && path.len() < 100 {
        path.trim_start_matches('/').to_owned()
    } else {
        "other".to_owned()
    }
}

fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "CANCELLED",
        Ok(tonic::Code::Unknown) => "UNKNOWN",
        Ok(tonic::Code::InvalidArgument) => "INVALID_ARGUMENT",
        Ok(tonic::Code::DeadlineExceeded) => "DEADLINE_EXCEEDED",
        Ok(tonic::Code::NotFound) => "NOT_FOUND",
        Ok(tonic::Code::AlreadyExists) => "ALREADY_EXISTS",
        Ok(tonic::Code::PermissionDenied) => "PERMISSION_DENIED",
        Ok(tonic::Code::ResourceExhausted) => "RESOURCE_EXHAUSTED",
        Ok(tonic::Code::FailedPrecondition) => "FAILED_PRECONDITION",
        Ok(tonic::Code::Aborted) => "ABORTED",
        Ok(tonic::Code::OutOfRange) => "OUT_OF_RANGE",
        Ok(tonic::Code::Unimplemented) => "UNIMPLEMENTED",
        Ok(tonic::Code::Internal) => "INTERNAL",
        Ok(tonic::Code::Unavailable) => "UNAVAILABLE",
        Ok(tonic::Code::DataLoss) => "DATA_LOSS",
        Ok(tonic::Code::Unauthenticated) => "UNAUTHENTICATED",
        Err(_) => "UNKNOWN",
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // Errors are trailers-only responses: grpc-status is a header.
            // A status sent in trailers after a body counts as OK here.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(code_name)
                .unwrap_or("OK");
            metrics.observe_call(&method, code, started.elapsed());
            Ok(response)
        })
    }
}
