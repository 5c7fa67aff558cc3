//! Loading `config.yaml`: environment substitution, parsing with field paths, Pingora's server
//! section, the `gateway:` settings (`gateway.rs`) and the bounds of every number (`limits.rs`).
//! Turning the parsed resources into runtime objects is `store::Snapshot::build`, which reports
//! semantic errors with the same kind of path.

pub mod env;
pub mod gateway;
pub mod limits;
pub mod schema;

use std::fmt;

use pingora_core::server::configuration::ServerConf;

pub use schema::FileConfig;

/// A config problem, with the path of the offending field (`routes[2].plugins.ai-proxy.provider`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The parsed file, before runtime compilation.
pub struct Loaded {
    pub file: FileConfig,
    pub server: ServerConf,
    /// Values substituted from the environment; redacted from any later error message.
    pub secrets: Vec<String>,
    /// The substituted document as JSON (the resources as written, for the admin API).
    pub raw: serde_json::Value,
}

/// Read, substitute and parse a config file.
pub fn load_file(path: &str) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("", format!("cannot read config file {path}: {e}")))?;
    parse_str(&text, &|name| std::env::var(name).ok())
}

/// Parse config text; `lookup` resolves `${VAR}` (the process environment in production).
pub fn parse_str(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let sub = env::substitute(text, lookup).map_err(|m| ConfigError::new("", m))?;
    let secrets = sub.secrets;
    let redact = |e: ConfigError| ConfigError {
        path: e.path,
        message: env::redact(&e.message, &secrets),
    };
    let de = serde_yaml::Deserializer::from_str(&sub.text);
    let file: FileConfig = match serde_path_to_error::deserialize(de) {
        Ok(f) => f,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde_yaml already starts some messages with the path; say it once.
            let inner = inner
                .strip_prefix(&format!("{path}: "))
                .map(str::to_string)
                .unwrap_or(inner);
            return Err(redact(ConfigError::new(path, inner)));
        }
    };
    let server = server_conf(file.server.as_ref()).map_err(redact)?;
    // The same document as plain JSON: what the admin API shows of the file's resources.
    let raw = serde_yaml::from_str(&sub.text).unwrap_or(serde_json::Value::Null);
    Ok(Loaded {
        file,
        server,
        secrets,
        raw,
    })
}

/// Pingora's `ServerConf` ignores unknown keys by design; aigate does not, so a typo such as
/// `grace_period_second` is reported instead of silently keeping the 300 s default.
fn server_conf(raw: Option<&serde_yaml::Value>) -> Result<ServerConf, ConfigError> {
    let mut conf = match raw {
        None | Some(serde_yaml::Value::Null) => ServerConf::default(),
        Some(v) => {
            let serde_yaml::Value::Mapping(map) = v else {
                return Err(ConfigError::new(
                    "server",
                    "must be a mapping of Pingora server settings",
                ));
            };
            let known = serde_yaml::to_value(ServerConf::default()).unwrap_or_default();
            if let serde_yaml::Value::Mapping(known) = known {
                for k in map.keys() {
                    if !known.contains_key(k) {
                        let name = k.as_str().unwrap_or("?");
                        return Err(ConfigError::new(
                            format!("server.{name}"),
                            "unknown Pingora server setting",
                        ));
                    }
                }
            }
            serde_path_to_error::deserialize::<_, ServerConf>(v.clone()).map_err(|e| {
                ConfigError::new(format!("server.{}", e.path()), e.into_inner().to_string())
            })?
        }
    };
    let was_set = |key: &str| {
        raw.and_then(|v| v.as_mapping())
            .is_some_and(|m| m.contains_key(key))
    };
    // Pingora sleeps the whole grace period on every shutdown (300 s by default). aigate's
    // defaults keep in-flight streams alive for a short while without making every restart slow.
    if !was_set("grace_period_seconds") {
        conf.grace_period_seconds = Some(5);
    }
    if !was_set("graceful_shutdown_timeout_seconds") {
        conf.graceful_shutdown_timeout_seconds = Some(60);
    }
    // Every bounded read and write of a request (the client's body and the answer, the provider
    // request and its answer) is a timeout. Pingora's own "fast" timeouts read the clock each
    // time one is made, waiting or not, and register in a shared tree when it waits; tokio's
    // timer costs nothing until the I/O has to wait, and less when it does (perf under wrk: the
    // fast timeouts were ~2% of an ai-proxy request's CPU). Pingora uses tokio's above this
    // threshold; aigate's default sends them all there. (Pingora's default, 900, or `null` for
    // fast timeouts everywhere, can still be set.)
    if !was_set("fast_timeout_to_tokio_threshold_seconds") {
        conf.fast_timeout_to_tokio_threshold_seconds = Some(0);
    }
    check_server_numbers(&conf)?;
    if let Some(path) = conf.ca_file.take() {
        crate::net::tls::check_ca_file(&path).map_err(|m| ConfigError::new("server.ca_file", m))?;
        // Connectors built after `-d` forked (the daemon changes to /) must read the same file.
        let absolute = std::path::absolute(&path)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string));
        conf.ca_file = Some(absolute.unwrap_or(path));
    }
    // Pingora parses these with unwrap() when it builds a connector: refuse them here instead.
    for (key, list) in [
        ("client_bind_to_ipv4", &conf.client_bind_to_ipv4),
        ("client_bind_to_ipv6", &conf.client_bind_to_ipv6),
    ] {
        for (i, ip) in list.iter().enumerate() {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::new(
                    format!("server.{key}[{i}]"),
                    format!("{ip:?} is not an IP address"),
                ));
            }
        }
    }
    Ok(conf)
}

/// Pingora's numbers that would panic or exhaust the machine at start-up rather than be refused:
/// tokio panics on `max_blocking_threads: 0`, every thread is spawned up front, the upstream
/// connection pool is preallocated for `upstream_keepalive_pool_size × threads` connections.
fn check_server_numbers(conf: &ServerConf) -> Result<(), ConfigError> {
    use limits::{MAX_KEEPALIVE_POOL, MAX_SECS, MAX_THREADS};
    let err = |field: &str, msg: String| Err(ConfigError::new(format!("server.{field}"), msg));
    if !(1..=MAX_THREADS).contains(&conf.threads) {
        return err("threads", format!("must be between 1 and {MAX_THREADS}"));
    }
    if !(1..=MAX_THREADS).contains(&conf.listener_tasks_per_fd) {
        return err(
            "listener_tasks_per_fd",
            format!("must be between 1 and {MAX_THREADS}"),
        );
    }
    if conf
        .upstream_keepalive_pool_size
        .saturating_mul(conf.threads)
        > MAX_KEEPALIVE_POOL
    {
        return err(
            "upstream_keepalive_pool_size",
            format!(
                "times threads must be at most {MAX_KEEPALIVE_POOL} (the pool is preallocated)"
            ),
        );
    }
    if conf
        .max_blocking_threads
        .is_some_and(|n| !(1..=MAX_THREADS).contains(&n))
    {
        return err(
            "max_blocking_threads",
            format!("must be between 1 and {MAX_THREADS}"),
        );
    }
    for (name, pools, per_pool) in [
        (
            "upstream_connect_offload",
            conf.upstream_connect_offload_threadpools,
            conf.upstream_connect_offload_thread_per_pool,
        ),
        (
            "downstream_tls_offload",
            conf.downstream_tls_offload_threadpools,
            conf.downstream_tls_offload_thread_per_pool,
        ),
    ] {
        if pools.unwrap_or(0).saturating_mul(per_pool.unwrap_or(0)) > MAX_THREADS {
            return err(
                &format!("{name}_threadpools"),
                format!("times {name}_thread_per_pool must be at most {MAX_THREADS}"),
            );
        }
    }
    for (field, v) in [
        ("grace_period_seconds", conf.grace_period_seconds),
        (
            "graceful_shutdown_timeout_seconds",
            conf.graceful_shutdown_timeout_seconds,
        ),
        (
            "blocking_threads_ttl_seconds",
            conf.blocking_threads_ttl_seconds,
        ),
    ] {
        if v.is_some_and(|s| s > MAX_SECS) {
            return err(field, format!("must be at most {MAX_SECS} (seconds)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn unknown_route_field_names_its_path() {
        let e = parse_str("routes:\n  - id: r1\n    uri: /x\n    bogus: 1\n", &no_env)
            .err()
            .unwrap();
        assert_eq!(e.path, "routes[0].bogus");
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn a_type_error_names_its_path_once() {
        let e = parse_str("gateway:\n  max_body_size: abc\n", &no_env)
            .err()
            .unwrap();
        assert_eq!(e.path, "gateway.max_body_size");
        assert!(e.message.starts_with("invalid type"), "{e}");
    }

    /// Parse and compile (plugins are checked by their registry when the config is compiled).
    fn compile(text: &str) -> Result<(), ConfigError> {
        let loaded = parse_str(text, &no_env)?;
        crate::runtime::Snapshot::build(&loaded.file).map(|_| ())
    }

    #[test]
    fn unknown_plugin_is_an_error() {
        let e = compile("routes:\n  - id: r1\n    uri: /x\n    plugins:\n      ai-proxi: {}\n")
            .err()
            .unwrap();
        assert_eq!(e.path, "routes[0].plugins.ai-proxi");
        assert!(e.message.contains("ai-proxi"), "{e}");
    }

    #[test]
    fn bad_provider_names_its_path() {
        let e = compile(
            "routes:\n  - id: r1\n    uri: /x\n    plugins:\n      ai-proxy:\n        provider: foo\n        auth: {}\n",
        )
        .err()
        .unwrap();
        assert_eq!(e.path, "routes[0].plugins.ai-proxy.provider");
    }

    #[test]
    fn unknown_server_key_is_an_error() {
        let e = parse_str("server:\n  grace_period_second: 3\n", &no_env)
            .err()
            .unwrap();
        assert_eq!(e.path, "server.grace_period_second");
    }

    #[test]
    fn server_defaults_are_set_deliberately() {
        let l = parse_str("server:\n  threads: 3\n", &no_env).unwrap();
        assert_eq!(l.server.threads, 3);
        assert_eq!(l.server.grace_period_seconds, Some(5));
        assert_eq!(l.server.fast_timeout_to_tokio_threshold_seconds, Some(0));
        let l = parse_str("server:\n  grace_period_seconds: 30\n", &no_env).unwrap();
        assert_eq!(l.server.grace_period_seconds, Some(30));
        let l = parse_str(
            "server:\n  fast_timeout_to_tokio_threshold_seconds: 900\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(l.server.fast_timeout_to_tokio_threshold_seconds, Some(900));
        let l = parse_str(
            "server:\n  fast_timeout_to_tokio_threshold_seconds: null\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(l.server.fast_timeout_to_tokio_threshold_seconds, None);
    }

    #[test]
    fn server_ca_file_must_be_a_readable_certificate_file() {
        let e = parse_str("server:\n  ca_file: /nonexistent/ca.pem\n", &no_env)
            .err()
            .unwrap();
        assert_eq!(e.path, "server.ca_file");
        assert!(e.message.contains("cannot read"), "{e}");
    }

    #[test]
    fn a_bad_client_bind_address_is_refused_not_a_panic() {
        let e = parse_str("server:\n  client_bind_to_ipv4: [1.2.3.4, nope]\n", &no_env)
            .err()
            .unwrap();
        assert_eq!(e.path, "server.client_bind_to_ipv4[1]");
        let l = parse_str("server:\n  client_bind_to_ipv6: [\"::1\"]\n", &no_env).unwrap();
        assert_eq!(l.server.client_bind_to_ipv6, ["::1"]);
    }

    #[test]
    fn env_values_are_redacted_from_errors() {
        let env = |n: &str| (n == "K").then(|| "sk-verysecret".to_string());
        let e = parse_str(
            "routes:\n  - id: r1\n    uri: /x\n    priority: ${K}\n",
            &env,
        )
        .err()
        .unwrap();
        assert!(!e.to_string().contains("sk-verysecret"), "{e}");
    }
}
