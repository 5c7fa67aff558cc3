//! aigate-mock: a mock LLM provider for aigate's integration tests and benchmarks.
//!
//! It speaks the providers' real wire formats over real TCP (OpenAI chat
//! completions with SSE streaming, embeddings, Vertex AI `:predict`, Google's
//! OAuth token grant, an httpbin-style echo) and lets every request choose how
//! the "provider" misbehaves through `x-mock-*` headers. Everything the gateway
//! sent upstream is recorded and can be read back through `GET /_mock/requests`.
//!
//! The program deliberately uses nothing from the `aigate` library: a mock that
//! shares code with the thing it tests would share its bugs too.
//!
//! Module map:
//! - `http`    — HTTP/1.x request reading and response heads (keep-alive, chunked, 100-continue)
//! - `knobs`   — the control knobs and how headers / config / CLI combine
//! - `openai`  — pure builders for the provider JSON and token counting
//! - `sse`     — SSE framing and the ways an event stream is sliced onto the wire
//! - `record`  — the request log behind `/_mock/requests`
//! - `server`  — connection loop, routing, endpoint handlers, control API

mod http;
mod knobs;
mod openai;
mod record;
mod server;
mod sse;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

const HELP_TAIL: &str = "\
ENDPOINTS (routed by path; the query string is ignored):
  .../chat/completions   OpenAI chat completion; SSE when the body has \"stream\": true.
                         Prompt tokens = words in messages[].content (string or text parts), >= 1;
                         completion tokens = number of content pieces.
  .../embeddings         OpenAI embeddings (input: string, strings, or token arrays;
                         encoding_format \"base64\" honoured). Prompt tokens = words, >= 1.
  ...:predict            Vertex AI text-embedding predict ({\"instances\":[{\"content\":..}]}).
  POST .../token         Google OAuth token grant -> mock-access-token-<n>.
  /anything[/...]        httpbin-style echo of method, url, args, headers, data, json.
  /health                {\"status\":\"ok\"}, status from health_status.
  GET    /_mock/requests  recorded requests, oldest first (last 1000); DELETE clears. Each has
                          conn (connection number), conn_request (1 = first on it) and
                          segments (TCP segments with data it came in; plain TCP on Linux).
  GET    /_mock/config    current process-wide knob defaults; POST a JSON object to change
                          some (keys as below with '_', null = back to CLI default);
                          DELETE resets all to the CLI defaults.
  anything else          404 JSON error.

CONTROL HEADERS (per request; header beats /_mock/config beats CLI flag;
config key = header name without x-mock-, dashes as underscores):
  x-mock-status: N              answer N; N >= 400 gives an OpenAI-shaped error
  x-mock-error-body: TEXT       replace the error body verbatim
  x-mock-error-content-type: T  content type of the error body
  x-mock-delay-ms: N            wait before the response header (also before close/hang)
  x-mock-body-delay-ms: N       JSON answers: wait between the head and the body
  x-mock-chunk-delay-ms: N      wait before each SSE event after the first
  x-mock-chunks: N              number of generated content pieces (default 3)
  x-mock-content: TEXT          the answer text, one piece per word (spaces kept)
  x-mock-split: true            each SSE event as 3 separate writes/HTTP chunks, 10 ms apart,
                                cut inside `data:` or the JSON, and inside the blank line
  x-mock-coalesce: true         head + all SSE events + last chunk in a single write
  x-mock-crlf: true             CRLF line endings in the SSE stream
  x-mock-comments: true         `: keep-alive` comment before each SSE event
  x-mock-usage: final|inline|none   where streamed usage goes (default final = OpenAI)
  x-mock-prompt-tokens: N       override prompt token count
  x-mock-completion-tokens: N   override completion token count
  x-mock-cached-tokens: N       add usage.prompt_tokens_details.cached_tokens
  x-mock-model: NAME            override the model reported
  x-mock-dims: N                embedding vector size (default 8)
  x-mock-token-ttl: SECS        expires_in of OAuth tokens
  x-mock-close: true            read the request, close the connection without answering
  x-mock-close-next: true       answer, keep the connection, and close it without answering when
                                the next request arrives on it (a provider that dropped an idle
                                pooled connection)
  x-mock-truncate-at: N         JSON answers: send only the first N bytes (head and body), then
                                close (N inside the head = a cut-off head; past it = a cut body)
  x-mock-hang: true             read the request, never answer (until the client leaves)
  x-mock-health-status: N       status of /health
Every response carries x-mock-name: NAME.";

/// Mock LLM provider for aigate's integration tests and wrk benchmarks.
///
/// Prints `aigate-mock listening on ADDR` once the socket is bound and, with
/// --tls-listen, a second line `aigate-mock tls listening on ADDR`; nothing else
/// goes to stdout. Both listeners serve the same mock (one request log, one set
/// of knobs); the control API works on either.
#[derive(Parser, Debug)]
#[command(name = "aigate-mock", version, after_help = HELP_TAIL)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,

    /// Instance name: the `x-mock-name` response header, the `system_fingerprint`
    /// and the last word of the default content ("Hello from NAME").
    #[arg(long, default_value = "mock")]
    name: String,

    /// Default status of the provider endpoints; >= 400 answers an error (x-mock-status).
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u16).range(200..=599))]
    status: u16,

    /// Default wait before the response header, in ms (x-mock-delay-ms).
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,

    /// Default wait before each SSE event after the first, in ms (x-mock-chunk-delay-ms).
    #[arg(long, value_name = "N", default_value_t = 0)]
    chunk_delay_ms: u64,

    /// Default number of generated content pieces (x-mock-chunks).
    #[arg(long, value_name = "N", default_value_t = 3)]
    chunks: usize,

    /// `expires_in` of the OAuth tokens served on .../token, in seconds (x-mock-token-ttl).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    token_ttl: u64,

    /// Do not record requests (benchmarks); GET /_mock/requests then answers [].
    #[arg(long)]
    no_record: bool,

    /// Also serve HTTPS on ADDR (port 0 picks a free port); needs --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<String>,

    /// PEM certificate chain for --tls-listen, leaf first.
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    tls_cert: Option<String>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-listen.
    #[arg(long, value_name = "FILE", requires = "tls_listen")]
    tls_key: Option<String>,
}

/// The HTTPS side: where to listen and the server config (certificate and key loaded).
struct Tls {
    listen: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {cert}: no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {key}: {e}"))?;
    // An explicit provider: ring, the one the rest of the build already uses, and no reliance on
    // a process-wide default being installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("TLS setup: {e}"))?;
    // The mock speaks HTTP/1.x only: say so, so a client offering h2 does not try it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    // The name is sent as a header value: refuse what would break the response head.
    if cli.name.is_empty() || cli.name.chars().any(char::is_control) {
        eprintln!("aigate-mock: --name must be non-empty and contain no control characters");
        return ExitCode::from(2);
    }
    let cli_knobs = knobs::Knobs {
        status: cli.status,
        delay_ms: cli.delay_ms,
        chunk_delay_ms: cli.chunk_delay_ms,
        chunks: cli.chunks,
        token_ttl: cli.token_ttl,
        ..knobs::Knobs::default()
    };
    if let Err(e) = cli_knobs.validate() {
        eprintln!("aigate-mock: {e}");
        return ExitCode::from(2);
    }

    let tls = match (cli.tls_listen, cli.tls_cert, cli.tls_key) {
        (Some(listen), Some(cert), Some(key)) => match tls_acceptor(&cert, &key) {
            Ok(acceptor) => Some(Tls { listen, acceptor }),
            Err(e) => {
                eprintln!("aigate-mock: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aigate-mock: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = Arc::new(server::App::new(cli.name, cli_knobs, !cli.no_record));
    runtime.block_on(run(&cli.listen, tls, app))
}

async fn bind(listen: &str) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    Ok((listener, addr))
}

async fn run(listen: &str, tls: Option<Tls>, app: Arc<server::App>) -> ExitCode {
    // Both sockets are bound before anything is printed, so a harness that has read the lines
    // can connect to either at once.
    let plain = bind(listen).await;
    let secure = match &tls {
        Some(t) => Some(bind(&t.listen).await),
        None => None,
    };
    let (listener, addr) = match plain {
        Ok(bound) => bound,
        Err(e) => {
            eprintln!("aigate-mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secure = match secure.transpose() {
        Ok(bound) => bound,
        Err(e) => {
            eprintln!("aigate-mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The harness reads the ports from these lines, so they must be flushed right away
    // and be the only things ever written to stdout.
    {
        let mut out = std::io::stdout().lock();
        let mut lines = format!("aigate-mock listening on {addr}\n");
        if let Some((_, tls_addr)) = &secure {
            lines.push_str(&format!("aigate-mock tls listening on {tls_addr}\n"));
        }
        if out
            .write_all(lines.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }

    match (secure, tls) {
        (Some((tls_listener, _)), Some(tls)) => {
            tokio::join!(
                server::serve(listener, app.clone()),
                server::serve_tls(tls_listener, tls.acceptor, app),
            );
        }
        _ => server::serve(listener, app).await,
    }
    ExitCode::SUCCESS
}

/// Wall-clock time in Unix milliseconds, as reported in the request log.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wall-clock time in Unix seconds, as in OpenAI's `created`.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
