//! The mount's Prometheus metrics (`dagfs mount --metrics ADDR`), under `dagfs_mount_*`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::metrics::{register_metrics, KindLabels, Registry};

/// What the mount reports. Clones share the same series.
#[derive(Clone, Debug)]
pub struct MountMetrics {
    /// Generation served.
    pub generation: Gauge,
    /// Head generation seen by the last successful poll.
    pub head: Gauge,
    /// Head minus served: alert when it stays above 0.
    pub lag: Gauge,
    /// 1 when the last poll succeeded: the store answered and the mount serves its head.
    pub online: Gauge,
    /// Generation switches.
    pub switches: Counter,
    /// Time from noticing a new head to serving it (fetch + switch).
    pub switch_seconds: Histogram,
    /// Failed polls and fetches, by kind.
    pub errors: Family<KindLabels, Counter>,
    /// File reads served from the cache.
    pub cache_reads: Counter,
    /// Reads that found their object missing from the cache and fetched it again.
    pub cache_misses: Counter,
}

impl MountMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> MountMetrics {
        let metrics = MountMetrics {
            generation: Gauge::default(),
            head: Gauge::default(),
            lag: Gauge::default(),
            online: Gauge::default(),
            switches: Counter::default(),
            // 10 ms .. ~80 s: a few changed files take milliseconds, a first fetch minutes.
            switch_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            errors: Family::default(),
            cache_reads: Counter::default(),
            cache_misses: Counter::default(),
        };
        register_metrics!(registry, "dagfs_mount",
            "generation", "Generation served" => metrics.generation;
            "head_generation", "Head generation seen by the last successful poll" => metrics.head;
            "generation_lag", "Head minus the generation served" => metrics.lag;
            "online",
                "1 when the last poll succeeded: the store answered and the mount serves its head"
                => metrics.online;
            "switches", "Switches to a new generation" => metrics.switches;
            "switch_duration_seconds", "From noticing a new head to serving it (fetch and switch)"
                => metrics.switch_seconds;
            "errors", "Failed polls and fetches, by kind" => metrics.errors;
            "cache_reads", "File reads served from the local cache" => metrics.cache_reads;
            "cache_misses", "Reads whose object was missing from the cache and fetched again"
                => metrics.cache_misses;
        );
        metrics
    }

    /// Records the served generation and the head.
    pub fn set_generations(&self, served: Option<u64>, head: Option<u64>) {
        let served = served.unwrap_or(0) as i64;
        self.generation.set(served);
        if let Some(head) = head {
            self.head.set(head as i64);
            self.lag.set((head as i64 - served).max(0));
        }
    }
}
