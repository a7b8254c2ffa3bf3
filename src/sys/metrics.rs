//! The optional Prometheus endpoint every long-running dagfs command shares (`--metrics ADDR`).
//!
//! A command builds one [`Registry`] (from `prometheus-client`, the Prometheus project's own
//! Rust client), registers its metrics into it (sync's are in [`crate::sync::SyncMetrics`];
//! mount and failover add theirs the same way), and calls [`serve`], which answers
//!
//! - `GET /metrics`: the registry in the OpenMetrics text format (which Prometheus scrapes
//!   natively);
//! - `GET /healthz`: `200 ok`, or `503` and the reason while the command has marked itself
//!   unhealthy through its [`Health`].
//!
//! The HTTP side is hyper's HTTP/1 server (the maintained core of Rust's HTTP stack) on a
//! thread with a runtime of its own, rather than a framework: two read-only GET routes need
//! no routing layer or TLS, and a scrape must keep answering even while the command's own
//! runtime is busy with a slow HDFS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};

pub use prometheus_client::registry::Registry;

/// Labels of the error counters: the kind of error (`unavailable`, `timeout`, `corrupt`...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabels {
    /// The kind.
    pub kind: &'static str,
}

/// Registers metrics under `prefix` in `registry`, one `"name", "help" => metric` a line; the
/// registry keeps a clone, which shares the series.
///
/// A macro rather than a function over a list: the metrics differ in type, and
/// prometheus-client registers only concrete ones (a boxed `dyn Metric` is not one).
macro_rules! register_metrics {
    ($registry:expr, $prefix:literal, $($name:literal, $help:literal => $metric:expr;)+) => {{
        let registry = $registry.sub_registry_with_prefix($prefix);
        $(registry.register($name, $help, $metric.clone());)+
    }};
}
pub(crate) use register_metrics;

/// OpenMetrics text format, as `prometheus_client::encoding::text` writes it.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The endpoint could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {detail}; pick a free address with --metrics HOST:PORT")]
pub struct MetricsError {
    /// The address asked for.
    addr: SocketAddr,
    /// Why.
    detail: String,
}

/// Whether a command considers itself healthy, as `/healthz` reports it. Clones share state.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Marks the command healthy.
    pub fn set_healthy(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Marks the command unhealthy, with a one-line reason.
    pub fn set_unhealthy(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// The reason the command is unhealthy, if it is.
    pub fn problem(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A running endpoint; dropping it stops the server thread.
pub struct MetricsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves `registry` and `health` on `addr` until the returned handle is dropped.
pub fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
) -> Result<MetricsServer, MetricsError> {
    let failed = |e: std::io::Error| MetricsError {
        addr,
        detail: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
    listener.set_nonblocking(true).map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(failed)?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("dagfs-metrics".into())
        .spawn(move || runtime.block_on(accept(listener, stopped, registry, health)))
        .map_err(failed)?;
    tracing::info!(addr = %bound, "serving metrics on /metrics and /healthz");
    Ok(MetricsServer {
        stop: Some(stop),
        thread: Some(thread),
        addr: bound,
    })
}

/// Serves connections until `stopped` fires (or its sender is dropped).
async fn accept(
    listener: std::net::TcpListener,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    registry: Arc<Registry>,
    health: Health,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => return tracing::error!(error = %e, "cannot serve metrics"),
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics connection not accepted");
                    continue;
                }
            },
        };
        let (registry, health) = (Arc::clone(&registry), health.clone());
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let response = respond(request.method(), request.uri().path(), &registry, &health);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics client went away");
            }
        });
    }
}

fn respond(
    method: &Method,
    path: &str,
    registry: &Registry,
    health: &Health,
) -> Response<Full<Bytes>> {
    let text = |status: u16, body: String, content_type: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).expect("a valid status code");
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    if method != Method::GET && method != Method::HEAD {
        return text(405, "only GET\n".into(), "text/plain");
    }
    match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => text(200, body, CONTENT_TYPE),
                Err(e) => text(500, format!("cannot encode metrics: {e}\n"), "text/plain"),
            }
        }
        "/healthz" => match health.problem() {
            None => text(200, "ok\n".into(), "text/plain"),
            Some(problem) => text(503, format!("{problem}\n"), "text/plain"),
        },
        _ => text(404, "try /metrics or /healthz\n".into(), "text/plain"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.get(format!("http://{addr}{path}")).call().unwrap();
        let body = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), body)
    }

    #[test]
    fn serves_registered_metrics_and_health_over_http() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("dagfs_test_events", "Events seen", counter.clone());
        counter.inc_by(7);
        let health = Health::default();
        let server = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(registry),
            health.clone(),
        )
        .unwrap();

        let (status, body) = get(server.addr(), "/metrics");
        assert_eq!(status, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == "dagfs_test_events_total")
            .unwrap_or_else(|| panic!("no counter in {body}"));
        // prometheus-parse reads the classic format, where `# TYPE` names the sample itself;
        // OpenMetrics names the family (`dagfs_test_events`), so the sample parses untyped.
        assert!(
            matches!(sample.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v == 7.0),
            "{:?}",
            sample.value
        );

        assert_eq!(get(server.addr(), "/healthz"), (200, "ok\n".into()));
        health.set_unhealthy("store unreachable");
        assert_eq!(
            get(server.addr(), "/healthz"),
            (503, "store unreachable\n".into())
        );
        assert_eq!(get(server.addr(), "/nope").0, 404);

        let taken = server.addr();
        let error = serve(taken, Arc::new(Registry::default()), Health::default())
            .err()
            .expect("the address is taken");
        assert!(error.to_string().contains("--metrics"), "{error}");
    }
}
