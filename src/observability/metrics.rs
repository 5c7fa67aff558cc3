//! Prometheus metrics: the families aigate exports, their label sets, and the cheap way to reach
//! a series from a request.
//!
//! Names follow APISIX's `prometheus` plugin where one fits (`http_status`, `http_latency` in
//! milliseconds, `llm_prompt_tokens`, ...) behind a configurable prefix (`aigate_`; set
//! `metric_prefix: apisix_` to keep APISIX dashboards). Every label value comes from the config
//! (route, service, consumer and instance names, upstream nodes) or from a small closed set
//! (status codes); the one value a client chooses, the model, is admitted up to
//! `max_model_labels` distinct names and is `other` past them.
//!
//! The hot path takes no lock. A route's series that depend only on config (its latency
//! histograms per node, its in-flight gauges) are resolved once, when the route is compiled
//! (`RouteSeries`, `NodeSeries`); they are shared handles into the registry, so a recompiled
//! route keeps counting into the same series. Series with a per-request label (status code,
//! consumer, model) are found through a per-thread cache (`LabelCache`): Pingora's worker
//! threads live as long as the process, so after the first request of a combination a thread
//! finds it without touching the registry's lock.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `gateway.metrics`, validated.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub listen: std::net::SocketAddr,
    /// Put in front of every metric name (`aigate_`).
    pub prefix: String,
    /// Distinct `llm_model` label values admitted; later ones are counted as `other`.
    pub max_model_labels: usize,
}

pub const DEFAULT_PREFIX: &str = "aigate_";
pub const DEFAULT_MAX_MODEL_LABELS: usize = 100;
/// The label value of models past `max_model_labels`.
pub const OTHER_MODEL: &str = "other";

/// APISIX's `http_latency` buckets, in milliseconds (1 ms to 60 s).
const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];
/// The gateway's own time per request is tens of microseconds: finer buckets (ms).
const OVERHEAD_BUCKETS_MS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
];

/// Entries a thread's label cache holds before it starts over (bounds memory when label values
/// churn, e.g. consumers added and removed over months).
const CACHE_CAP: usize = 16 * 1024;

static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();

/// Turn metrics on for this process (`gateway.metrics` is set). Routes compiled from now on are
/// measured. The first call wins: the settings of a running process do not change.
pub fn init(settings: MetricsSettings) -> Result<Arc<Metrics>, String> {
    if let Some(m) = GLOBAL.get() {
        return Ok(m.clone());
    }
    let m = Arc::new(Metrics::new(settings)?);
    Ok(GLOBAL.get_or_init(|| m).clone())
}

/// The process's metrics, when `gateway.metrics` is on.
pub fn global() -> Option<&'static Arc<Metrics>> {
    GLOBAL.get()
}

pub struct Metrics {
    /// Tells this registry's entries apart in the per-thread caches (tests build several).
    uid: u64,
    pub settings: MetricsSettings,
    registry: Registry,
    http_status: IntCounterVec,
    http_latency: HistogramVec,
    gateway_overhead: HistogramVec,
    llm_ttft: HistogramVec,
    llm_prompt_tokens: IntCounterVec,
    llm_completion_tokens: IntCounterVec,
    llm_fallbacks: IntCounterVec,
    upstream_retries: IntCounterVec,
    quota_rejections: IntCounterVec,
    requests_in_flight: IntGaugeVec,
    llm_active_streams: IntGaugeVec,
    upstream_status: IntGaugeVec,
    /// Model names admitted as label values so far.
    models: Mutex<HashSet<Box<str>>>,
}

/// A route's series that depend only on config, resolved when the route is compiled.
pub struct RouteSeries {
    pub route: Arc<str>,
    pub service: Arc<str>,
    pub in_flight: IntGauge,
    pub streams: IntGauge,
    pub quota_rejections: IntCounter,
}

/// A (route, node) pair's series: the node is an LLM instance or an upstream node (`host:port`),
/// or `""` for requests that reached none.
pub struct NodeSeries {
    pub node: Arc<str>,
    pub request: Histogram,
    pub upstream: Histogram,
    pub overhead: Histogram,
    pub ttft: Histogram,
    pub fallbacks: IntCounter,
    pub retries: IntCounter,
}

/// A metric family, registered in `registry` (either step fails only on a bad name or label).
fn add<T: Collector + Clone + 'static>(
    registry: &Registry,
    made: Result<T, prometheus::Error>,
) -> Result<T, String> {
    let family = made.map_err(|e| format!("metrics: {e}"))?;
    registry
        .register(Box::new(family.clone()))
        .map_err(|e| format!("metrics: {e}"))?;
    Ok(family)
}

impl Metrics {
    pub fn new(settings: MetricsSettings) -> Result<Metrics, String> {
        static UID: AtomicU64 = AtomicU64::new(1);
        let p = &settings.prefix;
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(format!("{p}{name}"), help);
        let counter = |name: &str, help: &str, labels: &[&str]| {
            add(&registry, IntCounterVec::new(opts(name, help), labels))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            add(&registry, IntGaugeVec::new(opts(name, help), labels))
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let o = HistogramOpts::from(opts(name, help)).buckets(buckets.to_vec());
            add(&registry, HistogramVec::new(o, labels))
        };
        let m = Metrics {
            uid: UID.fetch_add(1, Ordering::Relaxed),
            http_status: counter(
                "http_status",
                "Requests answered, by status code, route, service, consumer and node (LLM instance or upstream node)",
                &["code", "route", "service", "consumer", "node"],
            )?,
            http_latency: histogram(
                "http_latency",
                "Request time (type=request: from the request to its last byte; type=upstream: the upstream's part), in milliseconds",
                &["type", "route", "service", "node"],
                LATENCY_BUCKETS_MS,
            )?,
            gateway_overhead: histogram(
                "gateway_overhead",
                "The gateway's own time per request (request time minus upstream time), in milliseconds",
                &["route", "service", "node"],
                OVERHEAD_BUCKETS_MS,
            )?,
            llm_ttft: histogram(
                "llm_time_to_first_token",
                "Time from sending a request to an LLM to its first token (streams) or its whole answer, in milliseconds",
                &["route", "service", "node"],
                LATENCY_BUCKETS_MS,
            )?,
            llm_prompt_tokens: counter(
                "llm_prompt_tokens",
                "Prompt tokens of LLM answers, by route, service, consumer, node and model sent upstream",
                &["route", "service", "consumer", "node", "llm_model"],
            )?,
            llm_completion_tokens: counter(
                "llm_completion_tokens",
                "Completion tokens of LLM answers, by route, service, consumer, node and model sent upstream",
                &["route", "service", "consumer", "node", "llm_model"],
            )?,
            llm_fallbacks: counter(
                "llm_fallbacks_total",
                "Attempts on an LLM instance that failed (or was over quota) and moved on to another instance",
                &["route", "service", "node"],
            )?,
            upstream_retries: counter(
                "upstream_retries_total",
                "Attempts retried on a fresh connection to the same node after a stale pooled connection failed",
                &["route", "service", "node"],
            )?,
            quota_rejections: counter(
                "llm_quota_rejections_total",
                "Requests refused by ai-rate-limiting",
                &["route", "service"],
            )?,
            requests_in_flight: gauge(
                "http_requests_in_flight",
                "Requests being served, by route",
                &["route", "service"],
            )?,
            llm_active_streams: gauge(
                "llm_active_streams",
                "Streamed LLM answers being sent, by route",
                &["route", "service"],
            )?,
            upstream_status: gauge(
                "upstream_status",
                "Health of each ai-proxy-multi instance (1 healthy, 0 cooling down or failing its active check)",
                &["route", "node"],
            )?,
            models: Mutex::new(HashSet::new()),
            registry,
            settings,
        };
        Ok(m)
    }

    pub fn route(&self, route: &str, service: &str) -> RouteSeries {
        let l = [route, service];
        RouteSeries {
            route: route.into(),
            service: service.into(),
            in_flight: self.requests_in_flight.with_label_values(&l),
            streams: self.llm_active_streams.with_label_values(&l),
            quota_rejections: self.quota_rejections.with_label_values(&l),
        }
    }

    pub fn node(&self, route: &str, service: &str, node: &str) -> NodeSeries {
        let l = [route, service, node];
        NodeSeries {
            node: node.into(),
            request: self
                .http_latency
                .with_label_values(&["request", route, service, node]),
            upstream: self
                .http_latency
                .with_label_values(&["upstream", route, service, node]),
            overhead: self.gateway_overhead.with_label_values(&l),
            ttft: self.llm_ttft.with_label_values(&l),
            fallbacks: self.llm_fallbacks.with_label_values(&l),
            retries: self.upstream_retries.with_label_values(&l),
        }
    }

    /// Count one answer in `http_status`.
    pub fn count_status(&self, route: &RouteSeries, node: &str, consumer: &str, code: u16) {
        self.count_code(code, &route.route, &route.service, consumer, node);
    }

    fn count_code(&self, code: u16, route: &str, service: &str, consumer: &str, node: &str) {
        let mut buf = [0u8; 5];
        let labels = [status_str(code, &mut buf), route, service, consumer, node];
        STATUS.with(|c| {
            c.borrow_mut().with(
                self.uid,
                &labels,
                || self.http_status.with_label_values(&labels),
                |counter| counter.inc(),
            )
        });
    }

    /// Count an answer's tokens.
    pub fn count_tokens(
        &self,
        route: &RouteSeries,
        node: &str,
        consumer: &str,
        model: &str,
        prompt: u64,
        completion: u64,
    ) {
        let labels = [&*route.route, &route.service, consumer, node, model];
        TOKENS.with(|c| {
            c.borrow_mut().with(
                self.uid,
                &labels,
                || {
                    let model = self.model_label(model);
                    let l = [&*route.route, &route.service, consumer, node, model];
                    (
                        self.llm_prompt_tokens.with_label_values(&l),
                        self.llm_completion_tokens.with_label_values(&l),
                    )
                },
                |(p, c)| {
                    p.inc_by(prompt);
                    c.inc_by(completion);
                },
            )
        });
    }

    /// A request no route matched (or refused before routing): counted under route `""`.
    pub fn count_unrouted(&self, code: u16) {
        self.count_code(code, "", "", "", "");
    }

    /// The label value for a model: itself while fewer than `max_model_labels` are known.
    fn model_label<'a>(&self, model: &'a str) -> &'a str {
        let mut known = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(model) {
            return model;
        }
        if known.len() < self.settings.max_model_labels {
            known.insert(model.into());
            return model;
        }
        OTHER_MODEL
    }

    /// Set the health gauges from `instances` ((route, instance, healthy) of the live config).
    /// Run at scrape time: removed instances disappear from the answer.
    pub fn set_health<'a>(&self, instances: impl Iterator<Item = (&'a str, &'a str, bool)>) {
        self.upstream_status.reset();
        for (route, node, healthy) in instances {
            self.upstream_status
                .with_label_values(&[route, node])
                .set(healthy as i64);
        }
    }

    /// Everything in Prometheus's text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// A status code as text, without allocating (codes outside 100..=999 are `0`).
fn status_str(code: u16, buf: &mut [u8; 5]) -> &str {
    if !(100..=999).contains(&code) {
        return "0";
    }
    buf[0] = b'0' + (code / 100) as u8;
    buf[1] = b'0' + (code / 10 % 10) as u8;
    buf[2] = b'0' + (code % 10) as u8;
    std::str::from_utf8(&buf[..3]).unwrap_or("0")
}

thread_local! {
    static STATUS: RefCell<LabelCache<IntCounter>> = RefCell::new(LabelCache::default());
    static TOKENS: RefCell<LabelCache<(IntCounter, IntCounter)>> = RefCell::new(LabelCache::default());
}

/// A thread's map from label values to series handles. Looked up by the values as borrowed
/// strings (no allocation); an entry owns copies of them.
struct LabelCache<V> {
    map: HashMap<u64, Vec<Entry<V>>, NoRehash>,
    len: usize,
    hasher: foldhash::fast::FixedState,
}

struct Entry<V> {
    uid: u64,
    labels: Box<[Box<str>]>,
    value: V,
}

impl<V> Default for LabelCache<V> {
    fn default() -> Self {
        LabelCache {
            map: HashMap::default(),
            len: 0,
            hasher: foldhash::fast::FixedState::with_seed(0x61_69_67_61_74_65),
        }
    }
}

impl<V> LabelCache<V> {
    fn with<R>(
        &mut self,
        uid: u64,
        labels: &[&str],
        make: impl FnOnce() -> V,
        use_it: impl FnOnce(&V) -> R,
    ) -> R {
        let mut h = self.hasher.build_hasher();
        h.write_u64(uid);
        for l in labels {
            h.write(l.as_bytes());
            h.write_u8(0xff);
        }
        let key = h.finish();
        let same = |e: &Entry<V>| {
            e.uid == uid
                && e.labels.len() == labels.len()
                && e.labels.iter().zip(labels).all(|(a, b)| **a == **b)
        };
        if let Some(e) = self.map.get(&key).and_then(|b| b.iter().find(|e| same(e))) {
            return use_it(&e.value);
        }
        if self.len >= CACHE_CAP {
            self.map.clear();
            self.len = 0;
        }
        let entry = Entry {
            uid,
            labels: labels.iter().map(|l| Box::from(*l)).collect(),
            value: make(),
        };
        self.len += 1;
        let bucket = self.map.entry(key).or_default();
        bucket.push(entry);
        use_it(&bucket.last().expect("just pushed").value)
    }
}

/// The keys are already hashes.
#[derive(Default, Clone, Copy)]
struct NoRehash;

impl BuildHasher for NoRehash {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(max_models: usize) -> Metrics {
        Metrics::new(MetricsSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            prefix: "t_".into(),
            max_model_labels: max_models,
        })
        .unwrap()
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    #[test]
    fn status_codes_as_text() {
        let mut b = [0u8; 5];
        assert_eq!(status_str(200, &mut b), "200");
        assert_eq!(status_str(499, &mut b), "499");
        assert_eq!(status_str(0, &mut b), "0");
        assert_eq!(status_str(1000, &mut b), "0");
    }

    #[test]
    fn counts_land_in_their_series_through_the_thread_cache() {
        let m = metrics(10);
        let r = m.route("r1", "");
        for _ in 0..3 {
            m.count_status(&r, "a", "john", 200);
        }
        m.count_status(&r, "a", "jane", 200);
        m.count_status(&r, "b", "john", 503);
        let t = text(&m);
        assert!(
            t.contains(
                r#"t_http_status{code="200",consumer="john",node="a",route="r1",service=""} 3"#
            ),
            "{t}"
        );
        assert!(
            t.contains(
                r#"t_http_status{code="200",consumer="jane",node="a",route="r1",service=""} 1"#
            ),
            "{t}"
        );
        assert!(
            t.contains(
                r#"t_http_status{code="503",consumer="john",node="b",route="r1",service=""} 1"#
            ),
            "{t}"
        );
    }

    #[test]
    fn two_registries_never_share_a_cached_series() {
        let (a, b) = (metrics(10), metrics(10));
        m_count(&a);
        m_count(&b);
        m_count(&b);
        assert!(text(&a).contains(r#"code="200",consumer="",node="",route="x",service=""} 1"#));
        assert!(text(&b).contains(r#"code="200",consumer="",node="",route="x",service=""} 2"#));
    }

    fn m_count(m: &Metrics) {
        m.count_status(&m.route("x", ""), "", "", 200);
    }

    #[test]
    fn models_past_the_bound_are_other() {
        let m = metrics(2);
        let r = m.route("r", "");
        for model in ["m1", "m2", "m3", "m4", "m1"] {
            m.count_tokens(&r, "n", "", model, 10, 1);
        }
        let t = text(&m);
        assert!(
            t.contains(r#"llm_model="m1",node="n",route="r",service=""} 20"#),
            "{t}"
        );
        assert!(
            t.contains(r#"llm_model="m2",node="n",route="r",service=""} 10"#),
            "{t}"
        );
        assert!(
            t.contains(r#"llm_model="other",node="n",route="r",service=""} 20"#),
            "{t}"
        );
        assert!(!t.contains(r#"llm_model="m3""#), "{t}");
    }

    #[test]
    fn the_cache_starts_over_past_its_cap_and_keeps_counting() {
        let m = metrics(10);
        let r = m.route("r", "");
        for i in 0..(CACHE_CAP + 10) {
            m.count_status(&r, "n", &format!("c{i}"), 200);
        }
        m.count_status(&r, "n", "c0", 200);
        let t = text(&m);
        assert!(
            t.contains(r#"consumer="c0",node="n",route="r",service=""} 2"#),
            "{t:.300}"
        );
    }

    #[test]
    fn health_gauges_follow_the_live_instances() {
        let m = metrics(10);
        m.set_health([("r", "a", true), ("r", "b", false)].into_iter());
        let t = text(&m);
        assert!(
            t.contains(r#"t_upstream_status{node="a",route="r"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"t_upstream_status{node="b",route="r"} 0"#),
            "{t}"
        );
        m.set_health([("r", "a", true)].into_iter());
        assert!(!text(&m).contains(r#"node="b""#));
    }
}
