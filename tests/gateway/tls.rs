//! Outbound TLS: `server.ca_file` (Pingora's own server setting) is what every outbound TLS
//! connection trusts — proxied requests, the GCP token call, passthrough's first hop and the active
//! health probes — with certificates and host names verified by default; `ssl_verify: false`
//! turns verification off for one plugin. The "provider" is aigate-mock's HTTPS listener with a
//! certificate from a CA made by the test (nothing is committed).

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

use crate::harness::*;

const KEY: &str = "sk-tls-test-secret-0123456789";
const GCP_KEY: &str = include_str!("../fixtures/gcp-test-key.pkcs8.pem");

// ---------------------------------------------------------------------------------------------
// A private CA, made per test in its scratch dir (the Redis TLS tests use it too)

pub struct Pki {
    dir: PathBuf,
    pub ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = scratch_dir();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "aigate test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        Pki {
            dir,
            ca_file,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (IP addresses become IP SANs), signed by the CA; returns
    /// the certificate and key files.
    pub fn leaf(&self, tag: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            self.dir.join(format!("{tag}.pem")),
            self.dir.join(format!("{tag}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// An aigate-mock serving HTTPS with a certificate for `127.0.0.1` and `localhost`.
    fn mock(&self, name: &str) -> Mock {
        let (cert, key) = self.leaf(name, &["127.0.0.1", "localhost"]);
        Mock::start_tls(name, &cert, &key, &[])
    }

    /// The `server:` line that trusts this CA.
    fn ca_file_line(&self) -> String {
        format!("  ca_file: {}\n", self.ca_file.display())
    }

    /// A `server:` line with a bundle: an unrelated CA first, then this one (as when a private CA
    /// is appended to the system bundle).
    fn bundle_line(&self) -> String {
        let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other = other.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let bundle = self.dir.join("bundle.pem");
        let ours = std::fs::read_to_string(&self.ca_file).unwrap();
        std::fs::write(&bundle, format!("{}{ours}", other.pem())).unwrap();
        format!("  ca_file: {}\n", bundle.display())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn gateway(resources: &str, server_extra: &str) -> Gateway {
    Gateway::start_with(
        resources,
        GatewayOpts {
            server_extra,
            ..Default::default()
        },
    )
}

/// The error log once it has `needle` (Pingora logs a failed request after answering it).
fn error_log_with(gw: &Gateway, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = gw.error_log();
        if log.contains(needle) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_ok_from(r: &Resp, mock: &Mock) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        format!("Hello from {}", mock.name)
    );
}

// ---------------------------------------------------------------------------------------------
// Proxied requests

#[test]
fn ssl_verify_false_reaches_an_https_provider_without_a_ca_file() {
    let pki = Pki::new();
    let mock = pki.mock("tls1");
    let ep = mock.tls_url("127.0.0.1", "/v1/chat/completions");
    let gw = Gateway::start(&chat_route(&ep, KEY, &["ssl_verify: false"]));

    let r = gw.chat("/v1/chat/completions", &chat_body("hello over tls"));
    assert_ok_from(&r, &mock);
    assert_eq!(
        mock.last()["headers"]["authorization"],
        format!("Bearer {KEY}")
    );

    let mut body = chat_body("stream over tls");
    body["stream"] = json!(true);
    let r = gw.chat("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data = r.sse_data();
    let text: String = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "Hello from tls1");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn a_server_ca_file_bundle_is_trusted_by_proxied_requests_for_ip_and_dns_names() {
    let pki = Pki::new();
    let mock = pki.mock("tls2");
    // Default ssl_verify (true). "localhost" resolves to 127.0.0.1 on the project's machines,
    // where the mock listens.
    let by_ip = chat_route(&mock.tls_url("127.0.0.1", "/v1/chat/completions"), KEY, &[]);
    let by_name = chat_route(&mock.tls_url("localhost", "/v1/chat/completions"), KEY, &[])
        .replace("id: chat", "id: by-name")
        .replace("uri: /v1/chat/completions", "uri: /by-name");
    let by_name = by_name.trim_start_matches("routes:\n");
    let gw = gateway(&format!("{by_ip}{by_name}"), &pki.bundle_line());

    let r = gw.chat("/v1/chat/completions", &chat_body("by ip"));
    assert_ok_from(&r, &mock);
    let r = gw.chat("/by-name", &chat_body("by name"));
    assert_ok_from(&r, &mock);
    let reqs = mock.llm_requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let port = mock.tls_port.unwrap();
    assert_eq!(
        reqs[1]["headers"]["host"],
        format!("localhost:{port}"),
        "{reqs:?}"
    );
}

#[test]
fn without_a_ca_file_a_private_ca_is_refused_with_upstream_tls_error() {
    let pki = Pki::new();
    let mock = pki.mock("tls3");
    let ep = mock.tls_url("127.0.0.1", "/v1/chat/completions");
    let gw = Gateway::start(&chat_route(&ep, KEY, &[]));

    let r = gw.chat("/v1/chat/completions", &chat_body("untrusted"));
    let e = r.openai_error(502);
    assert_eq!(e["code"], "upstream_tls_error", "{}", r.text());
    assert!(!r.text().contains(KEY), "{}", r.text());
    assert!(r.header("x-request-id").is_some());
    assert!(
        mock.llm_requests().is_empty(),
        "a request went through an unverified connection"
    );
    let lines = gw.log_lines(1);
    assert!(lines[0].contains(" 502 "), "{lines:?}");
    // The operator's log says why; it never carries the key.
    let log = error_log_with(&gw, "invalid peer certificate: UnknownIssuer");
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    assert!(
        !log.contains(KEY),
        "the key leaked into the error log: {log}"
    );
}

#[test]
fn the_host_name_is_verified_even_with_the_ca_file() {
    let pki = Pki::new();
    // Signed by the trusted CA, but for another name.
    let (cert, key) = pki.leaf("other", &["other.test"]);
    let mock = Mock::start_tls("tls4", &cert, &key, &[]);
    let ep = mock.tls_url("127.0.0.1", "/v1/chat/completions");
    let gw = gateway(&chat_route(&ep, KEY, &[]), &pki.ca_file_line());

    let r = gw.chat("/v1/chat/completions", &chat_body("wrong name"));
    let e = r.openai_error(502);
    assert_eq!(e["code"], "upstream_tls_error", "{}", r.text());
    assert!(mock.llm_requests().is_empty());
    // The issuer was trusted; the name is what failed.
    let log = error_log_with(&gw, "certificate not valid for name");
    assert!(log.contains("certificate not valid for name"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// The gateway's own client: GCP token calls and passthrough's first hop

fn vertex_route(llm: &Mock, token_uri: &str) -> String {
    let sa = json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "tls-test-kid",
        "private_key": GCP_KEY,
        "client_email": "aigate-tls@test-project.iam.gserviceaccount.com",
        "token_uri": token_uri,
    })
    .to_string();
    format!(
        r#"
routes:
  - id: vertex
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth:
          gcp: {{ service_account_json: {sa} }}
        options: {{ model: google/gemini-2.0-flash }}
        override: {{ endpoint: "{ep}" }}
"#,
        sa = serde_json::to_string(&sa).unwrap(),
        ep = llm.url("/v1beta1/projects/test-project/locations/us-central1/endpoints/openapi/chat/completions"),
    )
}

#[test]
fn the_gcp_token_call_trusts_the_ca_file() {
    let pki = Pki::new();
    let token = pki.mock("tok");
    let llm = Mock::start("vx");
    let route = vertex_route(&llm, &token.tls_url("127.0.0.1", "/token"));

    let gw = gateway(&route, &pki.ca_file_line());
    let r = gw.chat("/v1/chat/completions", &chat_body("token over tls"));
    assert_ok_from(&r, &llm);
    assert_eq!(
        llm.last()["headers"]["authorization"],
        "Bearer mock-access-token-1"
    );
    let calls: Vec<_> = token
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/token")
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    drop(gw);

    // The same route without the CA: the token endpoint's certificate is not trusted.
    let gw = Gateway::start(&route);
    let r = gw.chat("/v1/chat/completions", &chat_body("token untrusted"));
    let e = r.openai_error(502);
    assert_eq!(e["code"], "upstream_auth_error", "{}", r.text());
    assert_eq!(
        llm.llm_requests().len(),
        1,
        "the provider was called anyway"
    );
    let log = error_log_with(&gw, "TLSHandshakeFailure");
    assert!(log.contains("TLSHandshakeFailure"), "{log}");
    assert!(
        !log.contains("PRIVATE KEY") && !log.contains("eyJ"),
        "{log}"
    );
}

fn passthrough_route(llm_endpoint: &str, echo: &Mock) -> String {
    format!(
        r#"
routes:
  - id: passthrough
    uri: /anything
    plugins:
      ai-proxy:
        auth: {{ header: {{ Authorization: "Bearer {KEY}" }} }}
        model: {{ provider: openai, name: gpt-4 }}
        override: {{ endpoint: "{llm_endpoint}" }}
        passthrough: true
    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:{echo_port}": 1
"#,
        echo_port = echo.port,
    )
}

#[test]
fn passthroughs_llm_call_trusts_the_ca_file() {
    let pki = Pki::new();
    let llm = pki.mock("pt-llm");
    let echo = Mock::start("pt-echo");
    let route = passthrough_route(&llm.tls_url("localhost", "/v1/chat/completions"), &echo);

    let gw = gateway(&route, &pki.ca_file_line());
    let r = gw.chat("/anything", &chat_body("What is 1+1?"));
    assert_eq!(r.status, 200, "{}", r.text());
    // The echo upstream got the LLM's answer (made by the HTTPS mock) as its body.
    let echoed = r.json();
    assert_eq!(echoed["url"], "/anything");
    assert_eq!(
        echoed["json"]["choices"][0]["message"]["content"],
        "Hello from pt-llm"
    );
    assert_eq!(llm.llm_requests().len(), 1);
    drop(gw);

    // Without the CA the LLM call is refused, and nothing reaches the upstream.
    let gw = Gateway::start(&route);
    let r = gw.chat("/anything", &chat_body("What is 1+1?"));
    assert_eq!(r.openai_error(502)["code"], "upstream_tls_error");
    assert!(!r.text().contains(KEY), "{}", r.text());
    assert_eq!(llm.llm_requests().len(), 1);
    assert_eq!(echo.llm_requests().len(), 1);
    let log = gw.error_log();
    assert!(!log.contains(KEY));
    assert!(log.contains("UnknownIssuer"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Active health probes

/// ai-proxy-multi with instances `a` and `b` (equal weights) on the mocks' plain HTTP ports, so
/// requests work whatever the TLS settings; `a` is probed over HTTPS on its TLS port, so only
/// the probe depends on them.
fn probed_pair(a: &Mock, b: &Mock, probe_extra: &str) -> String {
    let inst = |n: &str, m: &Mock, checks: &str| {
        format!(
            "          - name: {n}\n            provider: openai-compatible\n            weight: 1\n            auth: {{ header: {{ Authorization: \"Bearer {KEY}\" }} }}\n            options: {{ model: model-{n} }}\n            override: {{ endpoint: \"{e}\" }}\n{checks}",
            e = m.chat_url(),
        )
    };
    let checks = format!(
        "            checks:\n              active:\n                type: https\n                port: {port}\n                http_path: /health\n{probe_extra}                healthy: {{ interval: 1, successes: 1 }}\n                unhealthy: {{ interval: 1, http_failures: 1 }}\n",
        port = a.tls_port.unwrap(),
    );
    format!(
        "routes:\n  - id: multi\n    uri: /chat\n    plugins:\n      ai-proxy-multi:\n        instances:\n{}{}",
        inst("a", a, &checks),
        inst("b", b, "")
    )
}

fn models(gw: &Gateway, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = gw.chat("/chat", &chat_body("which one?"));
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["model"].as_str().unwrap().to_string()
        })
        .collect()
}

fn probes(mock: &Mock) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r["path"] == "/health")
        .count()
}

/// Wait (up to 10 s) until the instance has answered `n` probes: `n` probe rounds have passed.
fn wait_for_probes(mock: &Mock, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probes(mock) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} probes reached the instance",
            probes(mock)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn https_health_probes_trust_the_ca_file() {
    let pki = Pki::new();
    let a = pki.mock("a");
    let b = Mock::start("b");
    let gw = gateway(&probed_pair(&a, &b, ""), &pki.ca_file_line());
    // Two rounds of probes completed their HTTPS exchange (the mock records only requests it
    // read, so after a handshake)...
    wait_for_probes(&a, 2);
    let log = gw.error_log();
    assert!(
        !log.contains("instance a failed its health checks"),
        "{log}"
    );
    // ...and a stays in the pool.
    let picks = models(&gw, 4);
    assert_eq!(
        picks.iter().filter(|m| *m == "model-a").count(),
        2,
        "{picks:?}"
    );
}

#[test]
fn without_the_ca_file_https_probes_fail_and_take_the_instance_out() {
    let pki = Pki::new();
    let a = pki.mock("a");
    let b = Mock::start("b");
    let gw = Gateway::start(&probed_pair(&a, &b, ""));
    let log = error_log_with(&gw, "instance a failed its health checks");
    assert!(log.contains("instance a failed its health checks"), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert_eq!(probes(&a), 0, "a probe got through an unverified handshake");
    let before = a.llm_requests().len();
    assert!(models(&gw, 4).iter().all(|m| m == "model-b"));
    assert_eq!(a.llm_requests().len(), before);
    assert!(!log.contains(KEY), "{log}");
}

#[test]
fn https_verify_certificate_false_keeps_a_probe_healthy_without_the_ca_file() {
    let pki = Pki::new();
    let a = pki.mock("a");
    let b = Mock::start("b");
    let no_verify = "                https_verify_certificate: false\n";
    let gw = Gateway::start(&probed_pair(&a, &b, no_verify));
    wait_for_probes(&a, 2);
    let log = gw.error_log();
    assert!(
        !log.contains("instance a failed its health checks"),
        "{log}"
    );
    let picks = models(&gw, 4);
    assert!(picks.contains(&"model-a".to_string()), "{picks:?}");
}

// ---------------------------------------------------------------------------------------------
// Checking the file at load

#[test]
fn a_missing_or_non_pem_ca_file_is_refused_at_load_naming_the_field() {
    let pki = Pki::new();
    let config =
        |ca: &str| format!("server:\n  ca_file: {ca}\ngateway:\n  listen: 127.0.0.1:9080\n");
    let not_pem = pki.dir.join("not-pem.txt");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let key_only = pki.dir.join("key-only.pem");
    std::fs::write(&key_only, GCP_KEY).unwrap();
    let missing = pki.dir.join("missing.pem");
    for (file, why) in [
        (&missing, "cannot read"),
        (&not_pem, "no PEM certificate"),
        (&key_only, "must hold only PEM \"CERTIFICATE\" blocks"),
        (&pki.dir, "cannot read"),
    ] {
        let (ok, out) = check_config(&config(&file.display().to_string()), &[]);
        assert!(!ok, "{} was accepted: {out}", file.display());
        assert!(out.contains("server.ca_file: "), "{out}");
        assert!(out.contains(why), "{out}");
        assert!(!out.contains("panicked"), "{out}");
    }
    // The real CA file passes: the check refuses bad files, not every file.
    let (ok, out) = check_config(&config(&pki.ca_file.display().to_string()), &[]);
    assert!(ok, "{out}");
}

// ---------------------------------------------------------------------------------------------
// A daemon changes to / after it forks

/// A gateway started with `-d` from `dir`; SIGTERM by its pid file when dropped.
struct Daemon {
    pid_file: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", pid.trim()])
                .status();
        }
    }
}

#[test]
fn a_relative_ca_file_still_works_in_a_daemon() {
    let pki = Pki::new();
    let token = pki.mock("tok-d");
    let llm = Mock::start("vx-d");
    let port = free_port();
    // `ca_file: ca.pem`, relative to the directory aigate starts in. The daemon's own HTTP
    // client builds its connector after the fork, when the working directory is already /.
    let text = config_text(
        port,
        &pki.dir,
        &vertex_route(&llm, &token.tls_url("127.0.0.1", "/token")),
        &GatewayOpts {
            server_extra: "  ca_file: ca.pem\n",
            ..Default::default()
        },
    );
    std::fs::write(pki.dir.join("config.yaml"), text).unwrap();
    let status = std::process::Command::new(AIGATE)
        .current_dir(&pki.dir)
        .args(["-d", "-c", "config.yaml"])
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(pki.dir.join("error.log")).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let _daemon = Daemon {
        pid_file: pki.dir.join("aigate.pid"),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let r = request(
        port,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        chat_body("from a daemon").to_string().as_bytes(),
    );
    let log = std::fs::read_to_string(pki.dir.join("error.log")).unwrap_or_default();
    assert_ok_from(&r, &llm);
    assert!(!log.contains("panicked"), "{log}");
}
