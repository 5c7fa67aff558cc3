//! The engine's floor for the whole-gateway benchmark (`benches/wrk/run`): a bare Pingora
//! `ProxyHttp` on the same Pingora version as aigate that does nothing but set the peer.
//!
//! ```text
//! bare_pingora --listen 127.0.0.1:8081 --upstream 127.0.0.1:8000 [--threads N]
//! ```
//!
//! Everything is Pingora's default (`ServerConf::default()`, `HttpPeer::new`, the process-wide
//! upstream keep-alive pool, HTTP/1.1 keep-alive to clients) except the number of worker threads:
//! `--threads`, else `$BARE_PINGORA_THREADS`, else 1. The peer is plain HTTP and the request is
//! forwarded as it came (path, headers, body streamed). It prints `bare_pingora listening on ADDR`
//! before serving; SIGINT stops it at once, SIGTERM after Pingora's grace period.
//!
//! What aigate does that this does not (so the gap between the two is aigate's own work): it reads
//! each request header itself under its client limits before handing it to Pingora's HTTP/1
//! session (`src/downstream/`), sets per-peer timeouts and an idle timeout on pooled upstream
//! connections, routes, runs the plugin chain, reads and rewrites AI bodies, taps the answer for
//! usage and writes the access log.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // Plain HTTP, no SNI; Pingora pools the connection after the answer (keep-alive).
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    listen: String,
    upstream: SocketAddr,
    threads: usize,
}

const USAGE: &str = "usage: bare_pingora --listen ADDR --upstream IP:PORT [--threads N]\n\
                     (threads: --threads, else $BARE_PINGORA_THREADS, else 1)";

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = std::env::var("BARE_PINGORA_THREADS").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value("--listen")?),
            "--upstream" => upstream = Some(value("--upstream")?),
            "--threads" => threads = Some(value("--threads")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    let upstream = upstream
        .ok_or("--upstream is required")?
        .parse()
        .map_err(|e| format!("--upstream: {e} (an IP:PORT)"))?;
    let threads = match threads {
        None => 1,
        Some(t) => match t.parse() {
            Ok(n) if n >= 1 => n,
            _ => return Err(format!("threads: {t:?} is not a number >= 1")),
        },
    };
    Ok(Args {
        listen,
        upstream,
        threads,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bare_pingora: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // aigate logs at info by default; so does this (nothing is logged per request).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let conf = ServerConf {
        threads: args.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
    );
    proxy.add_tcp(&args.listen);
    server.add_service(proxy);
    println!(
        "bare_pingora listening on {} ({} thread{}) -> {}",
        args.listen,
        args.threads,
        if args.threads == 1 { "" } else { "s" },
        args.upstream
    );
    server.run(RunArgs::default());
    ExitCode::SUCCESS
}
