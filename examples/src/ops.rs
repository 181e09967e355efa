//! An operations endpoint for a consumer process: Prometheus metrics at `/metrics` and the
//! worker's health at `/health`, on one loopback or private port.
//!
//! ```no_run
//! # async fn demo(worker: kcl_core::worker::WorkerHandle) -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = kcl_examples::ops::install_prometheus()?;
//! let server = kcl_examples::ops::serve("127.0.0.1:9090".parse()?, metrics, worker).await?;
//! println!("metrics on http://{}/metrics", server.local_addr());
//! # Ok(()) }
//! ```
//!
//! `/health` answers `200` with `{"status":"ready","reasons":[]}` while the worker is ready and
//! `503` otherwise (starting, degraded, stopping, stopped, failed), with the reasons: use it as
//! a readiness probe, or as the health check of an autoscaling group.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kcl_core::worker::{HealthStatus, WorkerHandle};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Histogram buckets (seconds) for every `_seconds` metric: 1 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Gauges not updated for this long are dropped. The worker republishes the gauges of the
/// shards it runs at every lease scan (at most `failover / 6` apart), so this forgets shards
/// that moved to another worker.
const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs a Prometheus recorder as the process's global `metrics` recorder (histograms with
/// buckets, so `histogram_quantile` works across workers) and starts its upkeep task. Call it
/// once, inside a tokio runtime, before building the worker.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// A running operations endpoint. Dropping it stops serving.
#[derive(Debug)]
pub struct OpsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl OpsServer {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `/metrics` from `metrics` and `/health` from `worker` on `listen`.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    worker: WorkerHandle,
) -> std::io::Result<OpsServer> {
    let listener = TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, worker) = (metrics.clone(), worker.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&request, &metrics, &worker);
                    async move { Ok::<_, Infallible>(response) }
                });
                // A client that goes away mid-request is not an error worth reporting.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(OpsServer { local_addr, task })
}

fn respond(
    request: &Request<Incoming>,
    metrics: &PrometheusHandle,
    worker: &WorkerHandle,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/health" => {
            let health = worker.health();
            let status = match health.status {
                HealthStatus::Ready => StatusCode::OK,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = serde_json::json!({
                "status": status_name(health.status),
                "worker_id": worker.worker_id(),
                "reasons": health.reasons,
            });
            let mut response = text(status, format!("{body}\n"));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /health\n".to_owned(),
        ),
    }
}

fn status_name(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Starting => "starting",
        HealthStatus::Ready => "ready",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Stopping => "stopping",
        HealthStatus::Stopped => "stopped",
        HealthStatus::Failed => "failed",
        _ => "unknown",
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
