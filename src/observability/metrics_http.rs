//! The metrics listener (`gateway.metrics.listen`): `GET /metrics` in Prometheus's text format,
//! as a Pingora service of its own, so it passes to the new process in a graceful upgrade like
//! every other listener.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use super::metrics::Metrics;
use crate::plugins::prometheus::Prometheus;
use crate::runtime::Store;

pub struct MetricsService {
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
}

impl MetricsService {
    /// Instance health is read from the live config at scrape time (no work per request).
    fn refresh_health(&self) {
        let snapshot = self.store.load();
        let mut rows: Vec<(&str, &str, bool)> = Vec::new();
        for route in &snapshot.routes {
            let plugins = route.chain.plugins();
            let label = plugins
                .iter()
                .find_map(|p| (p.as_ref() as &dyn std::any::Any).downcast_ref::<Prometheus>())
                .and_then(|p| p.route_label())
                .unwrap_or(&route.id);
            for p in plugins.iter().filter(|p| p.serves_request()) {
                for (name, healthy) in p.instance_health() {
                    rows.push((label, name, healthy));
                }
            }
        }
        self.metrics.set_health(rows.into_iter());
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("server", "aigate")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for MetricsService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() != "/metrics" {
            return reply(
                404,
                "text/plain",
                b"not found: metrics are at /metrics\n".to_vec(),
            );
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            let mut r = reply(405, "text/plain", b"use GET\n".to_vec());
            r.headers_mut()
                .insert("allow", http::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        self.refresh_health();
        reply(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            self.metrics.render(),
        )
    }
}
