//! Prometheus metrics of one service, rendered at `/metrics` in the text exposition format.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// The metrics registry of one service, with the per-RPC families every server records.
pub struct Metrics {
    registry: Mutex<Registry>,
    rpcs: Family<RpcLabels, Counter>,
    latency: Family<MethodLabel, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(service: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "kith",
            [(
                std::borrow::Cow::Borrowed("service"),
                std::borrow::Cow::Owned(service.to_owned()),
            )]
            .into_iter(),
        );
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc",
            "RPCs handled, by method and gRPC status code",
            rpcs.clone(),
        );
        let latency = Family::<MethodLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_025, 2.0, 18))) as fn() -> Histogram,
        );
        registry.register("rpc_seconds", "RPC handling time", latency.clone());
        Self {
            registry: Mutex::new(registry),
            rpcs,
            latency,
        }
    }

    pub fn observe_rpc(&self, method: &str, code: i32, elapsed: Duration) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Lets a service register metrics of its own.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock().expect("metrics registry lock"))
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
