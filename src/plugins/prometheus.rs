//! `prometheus`: measures every request of a route into the process's metrics
//! (`crate::observability::metrics`), exported on `gateway.metrics.listen`.
//!
//! With `gateway.metrics` on, every route is measured, as if the plugin were in APISIX's
//! `global_rules`: the runtime binds one instance to each compiled route (`Prometheus::bind`),
//! with the route's series resolved there. Writing `prometheus: {prefer_name: true}` on a route
//! or its service labels the route (and service) by name instead of id, as in APISIX. Without
//! `gateway.metrics` the plugin is refused: nothing would export what it counts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_http::ResponseHeader;
use serde::Deserialize;

use super::ctx::{PluginCtx, RequestType};
use super::registry::{parse, Owner, Registration};
use super::{AsyncPhase, Chain, Plugin};
use crate::config::ConfigError;
use crate::observability::metrics::{self, Metrics, NodeSeries, RouteSeries};

pub const NAME: &str = "prometheus";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    priority: 500,
    build,
    credential: None,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrometheusConf {
    /// Label routes and services by `name` (when they have one) instead of `id`.
    #[serde(default)]
    prefer_name: bool,
}

fn build(
    conf: &serde_yaml::Value,
    path: &str,
    owner: &Owner,
) -> Result<Arc<dyn Plugin>, ConfigError> {
    let c: PrometheusConf = if conf.is_null() {
        PrometheusConf { prefer_name: false }
    } else {
        parse(conf, path)?
    };
    if matches!(owner, Owner::Consumer(_)) {
        return Err(ConfigError::new(
            path,
            "prometheus measures routes: configure it on a route or a service",
        ));
    }
    if metrics::global().is_none() {
        return Err(ConfigError::new(
            path,
            "gateway.metrics is not set, so nothing would export these metrics (set gateway.metrics.listen)",
        ));
    }
    Ok(Arc::new(Prometheus {
        prefer_name: c.prefer_name,
        bound: None,
    }))
}

/// The plugin as configured (`bound: None`, never run), or bound to one compiled route.
pub struct Prometheus {
    pub prefer_name: bool,
    bound: Option<Bound>,
}

struct Bound {
    metrics: Arc<Metrics>,
    route: RouteSeries,
    /// The route's LLM instances, in the serving plugin's order (ai-proxy-multi's indexes).
    llm_nodes: Vec<NodeSeries>,
    /// The route's upstream nodes, in the upstream's order.
    upstream_nodes: Vec<NodeSeries>,
    /// Requests that reached no node (refused before an attempt); resolved on first use, so
    /// routes that never have one show no empty series.
    none: std::sync::OnceLock<NodeSeries>,
}

/// What a route's measurement needs to know about it.
pub struct RouteLabels<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub service_id: Option<&'a str>,
    pub service_name: Option<&'a str>,
    /// The upstream's nodes as `host:port`.
    pub upstream_nodes: Vec<String>,
}

impl Prometheus {
    /// The route's label, once bound.
    pub fn route_label(&self) -> Option<&str> {
        self.bound.as_ref().map(|b| &*b.route.route)
    }

    /// The instance that measures one route: `chain` is the route's (a configured `prometheus`
    /// in it gives `prefer_name`).
    pub fn bind(metrics: &Arc<Metrics>, chain: &Chain, labels: RouteLabels<'_>) -> Prometheus {
        let prefer_name = chain
            .get(NAME)
            .and_then(|p| (p.as_ref() as &dyn std::any::Any).downcast_ref::<Prometheus>())
            .is_some_and(|p| p.prefer_name);
        let pick = |id: &str, name: Option<&str>| -> String {
            match name {
                Some(n) if prefer_name && !n.is_empty() => n.to_string(),
                _ => id.to_string(),
            }
        };
        let route = pick(labels.id, labels.name);
        let service = labels
            .service_id
            .map(|id| pick(id, labels.service_name))
            .unwrap_or_default();
        let llm_nodes = chain
            .plugins()
            .iter()
            .filter(|p| p.serves_request())
            .flat_map(|p| p.instance_names())
            .map(|n| metrics.node(&route, &service, n))
            .collect();
        let upstream_nodes = labels
            .upstream_nodes
            .iter()
            .map(|n| metrics.node(&route, &service, n))
            .collect();
        Prometheus {
            prefer_name,
            bound: Some(Bound {
                route: metrics.route(&route, &service),
                none: std::sync::OnceLock::new(),
                llm_nodes,
                upstream_nodes,
                metrics: metrics.clone(),
            }),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bound {
    fn with_node<R>(&self, ctx: &PluginCtx, f: impl FnOnce(&NodeSeries) -> R) -> R {
        // An LLM call counts for the instance of its last attempt, once one was sent.
        if let Some(llm) = ctx.llm.as_ref().filter(|l| l.sent_at.is_some()) {
            let name = &*llm.instance.name;
            if let Some(n) = self.llm_nodes.iter().find(|n| &*n.node == name) {
                return f(n);
            }
            // A consumer's own LLM plugin: its instances are not the route's.
            let n = self
                .metrics
                .node(&self.route.route, &self.route.service, name);
            return f(&n);
        }
        match ctx
            .outcome
            .upstream_node
            .and_then(|i| self.upstream_nodes.get(i))
        {
            Some(n) if ctx.llm.is_none() => f(n),
            _ => f(self.none.get_or_init(|| {
                self.metrics
                    .node(&self.route.route, &self.route.service, "")
            })),
        }
    }
}

#[async_trait]
impl Plugin for Prometheus {
    fn runs(&self, phase: AsyncPhase) -> bool {
        matches!(phase, AsyncPhase::Rewrite | AsyncPhase::Log)
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        REGISTRATION.priority
    }

    async fn rewrite(
        &self,
        _req: &mut super::PluginRequest<'_>,
        ctx: &mut PluginCtx,
    ) -> Result<(), crate::error::Rejection> {
        if let Some(b) = &self.bound {
            b.route.in_flight.inc();
            ctx.measured.in_flight = true;
        }
        Ok(())
    }

    fn header_filter(&self, resp: &mut ResponseHeader, ctx: &mut PluginCtx) {
        if let Some(b) = &self.bound {
            if ctx.request_type == RequestType::AiStream
                && resp.status.is_success()
                && !ctx.measured.stream
            {
                b.route.streams.inc();
                ctx.measured.stream = true;
            }
        }
    }

    async fn log(&self, ctx: &mut PluginCtx) {
        let Some(b) = &self.bound else { return };
        if std::mem::take(&mut ctx.measured.in_flight) {
            b.route.in_flight.dec();
        }
        if std::mem::take(&mut ctx.measured.stream) {
            b.route.streams.dec();
        }
        let o = ctx.outcome;
        let consumer = ctx.consumer.as_ref().map_or("", |c| c.username.as_str());
        if o.refused {
            b.route.quota_rejections.inc();
        }
        if let Some(llm) = &ctx.llm {
            // Every instance tried but the one that answered last failed (or was over quota).
            for (i, tried) in llm.tried.iter().enumerate() {
                if *tried && Some(i) != llm.instance_idx {
                    if let Some(n) = b.llm_nodes.get(i) {
                        n.fallbacks.inc();
                    }
                }
            }
        }
        b.with_node(ctx, |node| {
            node.request.observe(ms(o.total));
            let upstream = o.upstream.unwrap_or_default();
            if o.upstream.is_some() {
                node.upstream.observe(ms(upstream));
            }
            node.overhead.observe(ms(o.total.saturating_sub(upstream)));
            if o.stale_retry {
                node.retries.inc();
            }
            if let Some(llm) = &ctx.llm {
                if let (Some(first), Some(sent)) = (llm.first_token_at, llm.sent_at) {
                    node.ttft.observe(ms(first.saturating_duration_since(sent)));
                }
                if let Some(u) = llm.usage {
                    let model = llm.model.as_deref().unwrap_or("");
                    b.metrics.count_tokens(
                        &b.route,
                        &node.node,
                        consumer,
                        model,
                        u.prompt_tokens,
                        u.completion_tokens,
                    );
                }
            }
            // Last: a scrape that sees this answer counted sees all of its metrics.
            b.metrics
                .count_status(&b.route, &node.node, consumer, o.status);
        });
    }
}
