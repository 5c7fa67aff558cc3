use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a proxy allocates and frees many small, short-lived
/// buffers per request, often on another thread than the one that allocated them, and glibc's
/// malloc/free were ~12% of the CPU under wrk (perf); mimalloc's thread-local free lists cut that
/// (BENCHMARKS.md has the before/after). Only the binary: the library leaves the choice to
/// whoever embeds it.
#[global_allocator]
static ALLOCATOR: MiAlloc = MiAlloc;

/// The `mimalloc` crate's `GlobalAlloc` sends every allocation through `mi_malloc_aligned`,
/// whose alignment checks and generic path cost ~40 instructions more per call than
/// `mi_malloc` (callgrind: ~130 allocations per proxied request). Every mimalloc block is at
/// least word-aligned, so the plain calls serve any layout whose alignment is at most a word
/// (nearly all of them) and the aligned ones the rest, as std's own `System` allocator does.
struct MiAlloc;

const WORD: usize = std::mem::size_of::<usize>();

unsafe impl std::alloc::GlobalAlloc for MiAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        if layout.align() <= WORD {
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        if layout.align() <= WORD {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr as *mut std::ffi::c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        let p = ptr as *mut std::ffi::c_void;
        if layout.align() <= WORD {
            mi_realloc(p, new_size) as *mut u8
        } else {
            mi_realloc_aligned(p, new_size, layout.align()) as *mut u8
        }
    }
}

/// aigate: an AI gateway on Cloudflare Pingora, configured like Apache APISIX's AI plugins.
///
/// It proxies OpenAI-format chat-completion and embedding requests to LLM providers (OpenAI,
/// DeepSeek, Anthropic, Gemini, Vertex AI, Azure OpenAI, OpenRouter, AIMLAPI, any
/// OpenAI-compatible server), rewriting model, options, auth and endpoint per route, streaming
/// answers back, counting tokens and enforcing token quotas per route and per consumer.
#[derive(Parser, Debug)]
#[command(name = "aigate", version, after_long_help = AFTER_HELP)]
struct Cli {
    /// Config file (YAML). `${VAR}` and `${VAR:-default}` are replaced from the environment.
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        default_value = "conf/config.yaml"
    )]
    conf: String,

    /// Check the config and exit: 0 if valid, else 1 with the offending field's path.
    #[arg(short = 't', long = "test")]
    test: bool,

    /// Run in the background (Pingora daemon mode; writes server.pid_file).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,

    /// Zero-downtime upgrade: take the listening sockets over from the running aigate through
    /// server.upgrade_sock, then send the old process SIGQUIT.
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
}

const AFTER_HELP: &str = "\
Config file sections:
  server:   Pingora's own settings (threads, pid_file, upgrade_sock, grace_period_seconds,
            ca_file for trusting a private CA on every outbound TLS connection, ...)
  gateway:  listen (address or list),
            admin {listen (127.0.0.1:9180), key (X-API-KEY; required off loopback),
                   allow [CIDR, ...], redact_secrets}: the APISIX admin API
                   (/apisix/admin/routes, services, upstreams, consumers, credentials),
            metrics {listen (127.0.0.1:9091), metric_prefix (aigate_), max_model_labels
                     (100)}: Prometheus text format at GET /metrics,
            data_dir (./data: where admin API changes are kept), or for a cluster
            store {type: etcd, endpoints, prefix (/aigate), timeout (5), user, password},
            access_log {path: file | - | off, format: nginx-style $variables}, max_body_size,
            max_inflight_body_bytes (all buffered bodies together; no default),
            debug_headers (false; true adds X-AIGate-Overhead-Us to answers),
            client limits in seconds: client_header_timeout (60), client_body_timeout (60),
            client_body_total_timeout (300), keepalive_timeout (75), send_timeout (60);
            max_header_size (65536 bytes), max_connections (from the fd limit),
            dns {nameservers, timeout, min_ttl, max_ttl, error_ttl}
  routes:   APISIX route objects (uri/uris/paths, methods, hosts, vars, priority, service_id,
            plugins, upstream)
  services: APISIX service objects (id, plugins, upstream)
  consumers: APISIX consumers (username, desc, labels, plugins, credentials [{id, plugins}])

Plugins (by the order they run in, APISIX priority):
  key-auth          2500  names the consumer from the apikey header or query parameter
  ai-rate-limiting  1030  token quotas per instance, per rule key, per route or consumer;
                          counted in this process or shared through Redis (policy: redis)
  ai-proxy           999  one LLM provider instance
  ai-proxy-multi     998  several instances: priority, weights, fallback, health checks
  prometheus         500  on every route when gateway.metrics is set ({prefer_name: true}
                          labels routes and services by name)

Signals:
  SIGHUP   re-read the config file's routes, services, upstreams and consumers
  SIGUSR1  reopen the access log (logrotate; a renamed file is also noticed within 1 s)
  SIGTERM  graceful shutdown (in-flight requests finish within the grace period)
  SIGINT   fast shutdown
  SIGQUIT  graceful upgrade hand-off (used with -u by the new process)

Environment:
  RUST_LOG             log filter for the error log (default: info)
  GCP_SERVICE_ACCOUNT  service account JSON for vertex-ai when auth.gcp has none

Examples:
  aigate -c conf/config.yaml          run in the foreground
  aigate -c conf/config.yaml -t       validate the config
  aigate -c conf/config.yaml -d       run as a daemon (systemd Type=forking)
  aigate -c conf/config.yaml -u -d    take over from a running aigate";

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            use std::io::Write;
            let msg = record.args().to_string();
            let msg = aigate::observability::redact::scrub(&msg);
            writeln!(
                buf,
                "[{} {:<5} {}] {}",
                buf.timestamp(),
                record.level(),
                record.target(),
                msg
            )
        })
        .init();

    let prepared = match aigate::app::prepare(&cli.conf) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("aigate: invalid config {}: {e}", cli.conf);
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!(
            "aigate: config {} is valid ({} routes)",
            cli.conf,
            prepared.store.load().routes.len()
        );
        return ExitCode::SUCCESS;
    }
    match aigate::app::run(prepared, cli.upgrade, cli.daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aigate: {e}");
            ExitCode::FAILURE
        }
    }
}
