//! `aigate -t`: the shipped config is valid as is; every mistake is reported with the path of the
//! offending field (and never with a secret from the environment); `${VAR}` substitution;
//! services' plugins under a route's own; `--help`.

use std::process::Command;

use crate::harness::*;

/// A valid config around one ai-proxy route whose `ai-proxy:` body is `plugin` (8 spaces of
/// indent), so a case only spells out what it breaks.
fn with_plugin(plugin: &str) -> String {
    format!(
        "gateway:\n  listen: 127.0.0.1:9080\nroutes:\n  - id: r1\n    uri: /v1/chat/completions\n    plugins:\n      ai-proxy:\n{plugin}"
    )
}

const OPENAI: &str =
    "        provider: openai\n        auth: { header: { Authorization: \"Bearer k\" } }\n";

fn with_route(route_fields: &str) -> String {
    format!("gateway:\n  listen: 127.0.0.1:9080\nroutes:\n  - id: r1\n{route_fields}    plugins:\n      ai-proxy:\n{OPENAI}")
}

/// `-t` fails and names `path` as the field (`aigate: invalid config FILE: PATH: message`), and the
/// message contains every one of `words`.
#[track_caller]
fn assert_rejected(config: &str, env: &[(&str, &str)], path: &str, words: &[&str]) -> String {
    let (ok, out) = check_config(config, env);
    assert!(
        !ok,
        "accepted, expected an error at {path}:\n{config}\n{out}"
    );
    assert!(
        out.contains(&format!(": {path}: ")),
        "the error does not name {path:?}:\n{out}\n--- config:\n{config}"
    );
    for w in words {
        assert!(out.contains(w), "the error does not mention {w:?}:\n{out}");
    }
    assert!(!out.contains("panicked"), "{out}");
    out
}

#[track_caller]
fn assert_valid(config: &str, env: &[(&str, &str)]) {
    let (ok, out) = check_config(config, env);
    assert!(ok, "rejected:\n{config}\n{out}");
    assert!(out.contains("is valid"), "{out}");
}

#[test]
fn the_baseline_configs_used_below_are_valid() {
    // Every error case below changes one thing in these.
    assert_valid(&with_plugin(OPENAI), &[]);
    assert_valid(&with_route("    uri: /v1/chat/completions\n"), &[]);
}

// ---------------------------------------------------------------------------------------------
// 1. The shipped config

#[test]
fn shipped_config_is_valid_with_no_environment_variables_set() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/config.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    // Clear every variable the file refers to, and the families it uses.
    let referenced: Vec<String> = regex::Regex::new(r"\$\{([A-Za-z0-9_]+)")
        .unwrap()
        .captures_iter(&text)
        .map(|c| c[1].to_string())
        .collect();
    assert!(
        referenced.iter().any(|v| v == "OPENAI_API_KEY"),
        "{referenced:?}"
    );
    let mut cmd = Command::new(AIGATE);
    cmd.arg("-c").arg(path).arg("-t");
    for v in &referenced {
        cmd.env_remove(v);
    }
    for (k, _) in std::env::vars() {
        if k == "OPENAI_API_KEY" || k.starts_with("AIGATE_") || k.starts_with("LOCAL_LLM_") {
            cmd.env_remove(&k);
        }
    }
    let out = cmd.output().unwrap();
    let text_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text_out}");
    assert!(text_out.contains("is valid"), "{text_out}");
}

#[test]
fn exit_status_is_0_for_a_valid_config_and_1_for_an_invalid_one() {
    let dir = std::env::temp_dir().join(format!("aigate-cc-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    let bad = dir.join("bad.yaml");
    std::fs::write(&good, with_plugin(OPENAI)).unwrap();
    std::fs::write(
        &bad,
        with_plugin("        provider: openia\n        auth: {}\n"),
    )
    .unwrap();
    let run = |p: &std::path::Path| {
        Command::new(AIGATE)
            .arg("-c")
            .arg(p)
            .arg("-t")
            .output()
            .unwrap()
    };
    let ok = run(&good);
    assert_eq!(ok.status.code(), Some(0));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("good.yaml") && out.contains("valid") && out.contains("1 route"),
        "{out}"
    );
    let err = run(&bad);
    assert_eq!(err.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        msg.contains("bad.yaml") && msg.contains("routes[0].plugins.ai-proxy.provider"),
        "on stderr: {msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// 2. Every mistake names its field

#[test]
fn unknown_route_field() {
    assert_rejected(
        &with_route("    uri: /x\n    bogus: 1\n"),
        &[],
        "routes[0].bogus",
        &["bogus"],
    );
}

#[test]
fn unknown_plugin() {
    let cfg = "routes:\n  - id: r1\n    uri: /x\n    plugins:\n      ai-proxi: {}\n";
    assert_rejected(cfg, &[], "routes[0].plugins.ai-proxi", &["ai-proxi"]);
}

#[test]
fn bad_provider() {
    let cfg = with_plugin(
        "        provider: openia\n        auth: { header: { Authorization: \"Bearer k\" } }\n",
    );
    assert_rejected(
        &cfg,
        &[],
        "routes[0].plugins.ai-proxy.provider",
        &["openia", "openai-compatible"],
    );
}

#[test]
fn missing_provider_and_missing_auth() {
    assert_rejected(
        &with_plugin("        provider: openai\n"),
        &[],
        "routes[0].plugins.ai-proxy",
        &["auth"],
    );
    let cfg = with_plugin("        auth: { header: { Authorization: \"Bearer k\" } }\n");
    assert_rejected(
        &cfg,
        &[],
        "routes[0].plugins.ai-proxy.provider",
        &["required"],
    );
}

#[test]
fn invalid_override_endpoint() {
    for bad in [
        "api.example.com/v1/chat",
        "ftp://example.com/x",
        "http://",
        "http://host:99999/x",
        "http://a b/x",
    ] {
        let cfg = format!("{OPENAI}        override: {{ endpoint: \"{bad}\" }}\n");
        assert_rejected(
            &with_plugin(&cfg),
            &[],
            "routes[0].plugins.ai-proxy.override.endpoint",
            &["invalid endpoint"],
        );
    }
}

#[test]
fn providers_without_a_default_endpoint_need_override_endpoint() {
    for provider in ["openai-compatible", "azure-openai"] {
        let cfg =
            format!("        provider: {provider}\n        auth: {{ header: {{ api-key: k }} }}\n");
        let out = assert_rejected(
            &with_plugin(&cfg),
            &[],
            "routes[0].plugins.ai-proxy.override.endpoint",
            &["required"],
        );
        assert!(out.contains(provider), "{out}");
        // ...and with one it is fine.
        let ok = format!(
            "{cfg}        override: {{ endpoint: \"https://x.example/v1/chat/completions\" }}\n"
        );
        assert_valid(&with_plugin(&ok), &[]);
    }
}

#[test]
fn vertex_ai_needs_provider_conf_or_an_endpoint() {
    let base =
        "        provider: vertex-ai\n        auth: { header: { Authorization: \"Bearer k\" } }\n";
    let out = assert_rejected(
        &with_plugin(base),
        &[],
        "routes[0].plugins.ai-proxy.provider_conf",
        &["override.endpoint"],
    );
    assert!(
        out.contains("project_id") && out.contains("region"),
        "{out}"
    );
    let half = format!("{base}        provider_conf: {{ project_id: p }}\n");
    assert_rejected(
        &with_plugin(&half),
        &[],
        "routes[0].plugins.ai-proxy.provider_conf",
        &["region"],
    );
    assert_valid(
        &with_plugin(&format!(
            "{base}        provider_conf: {{ project_id: p, region: us-central1 }}\n"
        )),
        &[],
    );
    assert_valid(
        &with_plugin(&format!(
            "{base}        override: {{ endpoint: \"https://v.example/chat/completions\" }}\n"
        )),
        &[],
    );
}

#[test]
fn bad_auth_header_name() {
    let cfg = with_plugin(
        "        provider: openai\n        auth: { header: { \"Bad Header\": \"Bearer k\" } }\n",
    );
    assert_rejected(
        &cfg,
        &[],
        "routes[0].plugins.ai-proxy.auth.header.Bad Header",
        &["header name"],
    );
}

#[test]
fn zero_timeout() {
    assert_rejected(
        &with_plugin(&format!("{OPENAI}        timeout: 0\n")),
        &[],
        "routes[0].plugins.ai-proxy.timeout",
        &["at least 1"],
    );
    assert_rejected(
        &with_plugin(&format!("{OPENAI}        timeout: -5\n")),
        &[],
        "routes[0].plugins.ai-proxy.timeout",
        &[],
    );
}

#[test]
fn duplicate_route_id() {
    let cfg = format!(
        "routes:\n  - id: same\n    uri: /a\n    plugins:\n      ai-proxy:\n{OPENAI}  - id: other\n    uri: /b\n    plugins:\n      ai-proxy:\n{OPENAI}  - id: same\n    uri: /c\n    plugins:\n      ai-proxy:\n{OPENAI}"
    );
    assert_rejected(&cfg, &[], "routes[2].id", &["duplicate", "same"]);
}

#[test]
fn unknown_service_id() {
    let cfg = format!(
        "{}services:\n  - id: s1\n    plugins:\n      ai-proxy:\n{OPENAI}",
        with_route("    uri: /x\n    service_id: s2\n")
    );
    assert_rejected(&cfg, &[], "routes[0].service_id", &["s2", "does not exist"]);
}

#[test]
fn bad_vars() {
    let unknown_var = with_route("    uri: /x\n    vars: [[\"bogus_var\", \"==\", \"1\"]]\n");
    assert_rejected(
        &unknown_var,
        &[],
        "routes[0].vars",
        &["unknown variable", "bogus_var"],
    );
    let unknown_op = with_route("    uri: /x\n    vars: [[\"arg_model\", \"===\", \"1\"]]\n");
    assert_rejected(
        &unknown_op,
        &[],
        "routes[0].vars",
        &["unknown operator", "==="],
    );
    let not_wrapped = with_route("    uri: /x\n    vars: [\"arg_model\", \"==\", \"1\"]\n");
    assert_rejected(&not_wrapped, &[], "routes[0].vars", &[]);
}

#[test]
fn uri_without_leading_slash() {
    assert_rejected(
        &with_route("    uris: [/ok, v1/chat]\n"),
        &[],
        "routes[0].uris[1]",
        &["v1/chat", "must start with '/'"],
    );
}

/// A route gives its paths as `uri`, `uris` or `paths`; the error names the one the user wrote.
#[test]
fn uri_and_paths_errors_name_the_field_the_user_wrote() {
    let mut wrong = Vec::new();
    for (fields, path) in [
        ("    uri: v1/chat\n", "routes[0].uri"),
        ("    uri: \"/v1/*/chat\"\n", "routes[0].uri"),
        ("    paths: [/ok, v1/chat]\n", "routes[0].paths[1]"),
    ] {
        let (ok, out) = check_config(&with_route(fields), &[]);
        assert!(!ok, "{fields}: {out}");
        if !out.contains(&format!(": {path}: ")) {
            wrong.push(format!(
                "{} -> expected {path}, got: {}",
                fields.trim(),
                out.trim()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn star_not_at_the_end() {
    let out = assert_rejected(
        &with_route("    uris: [/a, \"/v1/*/chat\"]\n"),
        &[],
        "routes[0].uris[1]",
        &["/v1/*/chat"],
    );
    assert!(out.contains("end"), "{out}");
    assert_valid(&with_route("    uri: \"/v1/*\"\n"), &[]);
}

#[test]
fn bad_method() {
    assert_rejected(
        &with_route("    uri: /x\n    methods: [POST, FETCH]\n"),
        &[],
        "routes[0].methods[1]",
        &["FETCH"],
    );
}

#[test]
fn route_without_uri() {
    assert_rejected(&with_route(""), &[], "routes[0]", &["uri"]);
}

#[test]
fn unknown_server_key() {
    let cfg = format!(
        "server:\n  threads: 2\n  grace_period_second: 3\n{}",
        with_plugin(OPENAI)
    );
    assert_rejected(&cfg, &[], "server.grace_period_second", &["unknown"]);
    let cfg = format!("server:\n  threads: 0\n{}", with_plugin(OPENAI));
    assert_rejected(&cfg, &[], "server.threads", &[]);
}

#[test]
fn unknown_gateway_key() {
    let cfg = with_plugin(OPENAI).replace(
        "  listen: 127.0.0.1:9080\n",
        "  listen: 127.0.0.1:9080\n  max_body_sise: 10\n",
    );
    assert_rejected(&cfg, &[], "gateway.max_body_sise", &["max_body_sise"]);
    let cfg = with_plugin(OPENAI).replace(
        "  listen: 127.0.0.1:9080\n",
        "  listen: 127.0.0.1:9080\n  access_log: { paht: x }\n",
    );
    assert_rejected(&cfg, &[], "gateway.access_log.paht", &[]);
}

#[test]
fn bad_gateway_listen() {
    for bad in ["localhost", "9080", "0.0.0.0:99999", "127.0.0.1"] {
        let cfg =
            with_plugin(OPENAI).replace("listen: 127.0.0.1:9080", &format!("listen: \"{bad}\""));
        assert_rejected(&cfg, &[], "gateway.listen", &[bad, "ip:port"]);
    }
    let cfg = with_plugin(OPENAI).replace(
        "listen: 127.0.0.1:9080",
        "listen: [127.0.0.1:9080, \"nope\"]",
    );
    assert_rejected(&cfg, &[], "gateway.listen[1]", &["nope"]);
    let cfg = with_plugin(OPENAI).replace(
        "listen: 127.0.0.1:9080",
        "listen: [127.0.0.1:9080, \"[::1]:9081\"]",
    );
    assert_valid(&cfg, &[]);
}

#[test]
fn passthrough_without_upstream() {
    let cfg = with_plugin(&format!("{OPENAI}        passthrough: true\n"));
    assert_rejected(&cfg, &[], "routes[0].upstream", &["passthrough"]);
    let with_up = cfg.replace(
        "    plugins:\n",
        "    upstream: { nodes: { \"127.0.0.1:8080\": 1 } }\n    plugins:\n",
    );
    assert_valid(&with_up, &[]);
}

#[test]
fn unknown_upstream_type() {
    let cfg = "routes:\n  - id: r1\n    uri: /x\n    upstream:\n      type: chash\n      nodes: { \"127.0.0.1:8080\": 1 }\n";
    assert_rejected(
        cfg,
        &[],
        "routes[0].upstream.type",
        &["chash", "roundrobin"],
    );
    assert_valid(&cfg.replace("chash", "roundrobin"), &[]);
}

#[test]
fn route_with_nothing_to_proxy_to() {
    assert_rejected(
        "routes:\n  - id: r1\n    uri: /x\n",
        &[],
        "routes[0]",
        &["upstream"],
    );
}

#[test]
fn unset_variable_without_default_names_the_variable() {
    let cfg = with_plugin("        provider: openai\n        auth: { header: { Authorization: \"Bearer ${AIGATE_CC_TEST_UNSET_KEY}\" } }\n");
    let (ok, out) = check_config(&cfg, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("AIGATE_CC_TEST_UNSET_KEY") && out.contains("not set"),
        "{out}"
    );
    assert!(out.contains("line 9"), "the line of the reference: {out}");
    // Set, it is fine.
    assert_valid(&cfg, &[("AIGATE_CC_TEST_UNSET_KEY", "sk-1")]);
    // In a comment it is not a reference at all.
    assert_valid(
        &format!(
            "# export ${{AIGATE_CC_TEST_UNSET_KEY}} first\n{}",
            with_plugin(OPENAI)
        ),
        &[],
    );
}

#[test]
fn default_is_used_when_the_variable_is_unset() {
    // The default is observable: 0 is an invalid timeout, 5000 a valid one.
    let cfg = with_plugin(&format!(
        "{OPENAI}        timeout: ${{AIGATE_CC_TEST_TIMEOUT:-0}}\n"
    ));
    assert_rejected(&cfg, &[], "routes[0].plugins.ai-proxy.timeout", &[]);
    assert_valid(&cfg, &[("AIGATE_CC_TEST_TIMEOUT", "5000")]);
    let cfg = with_plugin(&format!(
        "{OPENAI}        timeout: ${{AIGATE_CC_TEST_TIMEOUT:-5000}}\n"
    ));
    assert_valid(&cfg, &[]);
    assert_rejected(
        &cfg,
        &[("AIGATE_CC_TEST_TIMEOUT", "0")],
        "routes[0].plugins.ai-proxy.timeout",
        &[],
    );
    // An empty default is allowed (the shipped config's admin key).
    let cfg = with_plugin(OPENAI).replace(
        "  listen: 127.0.0.1:9080\n",
        "  listen: 127.0.0.1:9080\n  admin: { key: \"${AIGATE_CC_TEST_ADMIN:-}\" }\n",
    );
    assert_valid(&cfg, &[]);
}

#[test]
fn a_secret_from_the_environment_in_a_wrong_field_is_not_echoed() {
    const SECRET: &str = "sk-SECRET-cc-0123456789abcdef";
    let env = [("CC_SECRET", SECRET)];
    let cases = [
        // serde type errors
        (
            with_plugin(&format!("{OPENAI}        timeout: ${{CC_SECRET}}\n")),
            "routes[0].plugins.ai-proxy.timeout",
        ),
        (
            with_route("    uri: /x\n    priority: ${CC_SECRET}\n"),
            "routes[0].priority",
        ),
        (
            format!(
                "server:\n  threads: ${{CC_SECRET}}\n{}",
                with_plugin(OPENAI)
            ),
            "server.threads",
        ),
        (
            with_plugin("        provider: ${CC_SECRET}\n        auth: {}\n"),
            "routes[0].plugins.ai-proxy.provider",
        ),
        // semantic errors
        (
            with_plugin(&format!(
                "{OPENAI}        override: {{ endpoint: \"${{CC_SECRET}}\" }}\n"
            )),
            "routes[0].plugins.ai-proxy.override.endpoint",
        ),
        (with_route("    uri: \"${CC_SECRET}\"\n"), "routes[0].uri"),
        (
            with_route("    uri: /x\n    methods: [\"${CC_SECRET}\"]\n"),
            "routes[0].methods[0]",
        ),
        (
            with_plugin(OPENAI).replace("listen: 127.0.0.1:9080", "listen: \"${CC_SECRET}\""),
            "gateway.listen",
        ),
        (
            with_plugin(OPENAI).replace(
                "  listen: 127.0.0.1:9080\n",
                "  listen: 127.0.0.1:9080\n  admin: { listen: \"${CC_SECRET}\" }\n",
            ),
            "gateway.admin.listen",
        ),
    ];
    let mut leaks = Vec::new();
    for (cfg, path) in &cases {
        let (ok, out) = check_config(cfg, &env);
        assert!(!ok, "{out}");
        assert!(
            out.contains(path.split('[').next().unwrap()),
            "{path}: {out}"
        );
        if out.contains(SECRET) || out.contains(&SECRET[8..]) {
            leaks.push(format!("{path}: {}", out.trim()));
        }
    }
    assert!(
        leaks.is_empty(),
        "the secret is echoed by -t:\n{}",
        leaks.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Services

#[test]
fn service_plugins_apply_to_routes_and_the_routes_own_plugin_wins() {
    let svc_mock = Mock::start("service-llm");
    let route_mock = Mock::start("route-llm");
    let plugin = |mock: &Mock, model: &str| {
        format!(
            "      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        options: {{ model: {model} }}\n        override: {{ endpoint: \"{}\" }}\n",
            mock.chat_url()
        )
    };
    let resources = format!(
        "services:\n  - id: svc\n    plugins:\n{}  - id: 7\n    plugins:\n{}\
         routes:\n  - id: inherits\n    uri: /inherits\n    service_id: svc\n\
         \x20 - id: overrides\n    uri: /overrides\n    service_id: svc\n    plugins:\n{}\
         \x20 - id: numeric\n    uri: /numeric\n    service_id: 7\n",
        plugin(&svc_mock, "service-model"),
        plugin(&route_mock, "seven-model"),
        plugin(&route_mock, "route-model"),
    );
    let (ok, out) = check_config(
        &config_text(
            9,
            &std::env::temp_dir(),
            &resources,
            &GatewayOpts::default(),
        ),
        &[],
    );
    assert!(ok, "{out}\n{resources}");
    let gw = Gateway::start(&resources);

    let r = gw.chat("/inherits", &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-mock-name"),
        Some("service-llm"),
        "the service's ai-proxy answered"
    );
    assert_eq!(r.json()["model"], "service-model");

    let r = gw.chat("/overrides", &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-mock-name"),
        Some("route-llm"),
        "the route's own ai-proxy wins"
    );
    assert_eq!(r.json()["model"], "route-model");

    let r = gw.chat("/numeric", &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "seven-model");

    assert_eq!(svc_mock.llm_requests().len(), 1);
    assert_eq!(route_mock.llm_requests().len(), 2);
    let lines = gw.log_lines(3);
    assert!(
        lines.iter().any(|l| l.contains(" inherits ai_chat ")),
        "{lines:?}"
    );
}

#[test]
fn a_service_upstream_serves_a_plain_route() {
    let mock = Mock::start("svc-up");
    let resources = format!(
        "services:\n  - id: s\n    upstream:\n      nodes:\n        \"127.0.0.1:{}\": 1\nroutes:\n  - id: plain\n    uri: /anything/*\n    service_id: s\n",
        mock.port
    );
    let gw = Gateway::start(&resources);
    let r = request(gw.port, "GET", "/anything/via-service", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["url"], "/anything/via-service");
    assert_eq!(r.header("x-mock-name"), Some("svc-up"));
}

#[test]
fn errors_in_a_service_plugin_name_the_service() {
    let cfg = "services:\n  - id: s\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {}\nroutes:\n  - id: r\n    uri: /x\n    service_id: s\n";
    assert_rejected(
        cfg,
        &[],
        "services[0].plugins.ai-proxy.override.endpoint",
        &[],
    );
    let cfg = format!("services:\n  - id: s\n    plugins:\n      ai-proxy:\n{OPENAI}  - id: s\n    plugins:\n      ai-proxy:\n{OPENAI}");
    assert_rejected(&cfg, &[], "services[1].id", &["duplicate"]);
}

// ---------------------------------------------------------------------------------------------
// 4. The command line

#[test]
fn help_lists_the_options_and_the_config_sections() {
    let out = Command::new(AIGATE).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for w in [
        "-c, --conf",
        "-t, --test",
        "-d, --daemon",
        "-u, --upgrade",
        "server:",
        "gateway:",
        "routes:",
        "services:",
        "access_log",
        "${VAR}",
        "SIGTERM",
    ] {
        assert!(help.contains(w), "--help does not mention {w:?}:\n{help}");
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("aigate-no-such-config-{}.yaml", now_ms()));
    let out = Command::new(AIGATE)
        .arg("-c")
        .arg(&path)
        .arg("-t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("cannot read") && msg.to_lowercase().contains("no such file"),
        "{msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");
}

#[test]
fn a_file_that_is_not_yaml_is_a_clear_error() {
    let (ok, out) = check_config("routes: [\n  - id: r1\n", &[]);
    assert!(!ok && out.contains("invalid config"), "{out}");
    let (ok, out) = check_config("routes: 5\n", &[]);
    assert!(!ok && out.contains("routes"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Numbers that would panic or overflow are refused with their path; the largest accepted ones
// load (a gateway started with them serves: tests/gateway/ai_proxy.rs).

/// A valid config with one ai-proxy-multi route whose plugin body is `plugin` (8 spaces) and
/// whose single instance ends with `instance_extra` (12 spaces).
fn with_multi(plugin: &str, instance_extra: &str) -> String {
    format!(
        "gateway:\n  listen: 127.0.0.1:9080\nroutes:\n  - id: m\n    uri: /m\n    plugins:\n      ai-proxy-multi:\n{plugin}        instances:\n          - name: a\n            provider: openai\n            weight: 1\n            auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n{instance_extra}"
    )
}

/// A valid plain route to an upstream with `upstream_extra` (6 spaces).
fn with_upstream(nodes: &str, upstream_extra: &str) -> String {
    format!("gateway:\n  listen: 127.0.0.1:9080\nroutes:\n  - id: u\n    uri: /u\n    upstream:\n      nodes: {nodes}\n{upstream_extra}")
}

const HUGE_F: &str = "1e300";

#[test]
fn durations_in_seconds_beyond_a_day_or_below_a_millisecond_are_refused() {
    assert_valid(&with_multi("", ""), &[]);
    assert_valid(&with_upstream("{ \"127.0.0.1:8080\": 1 }", ""), &[]);
    // Duration::from_secs_f64 panics on these.
    for v in [
        HUGE_F,
        "86401",
        "18446744073709551616.0",
        ".inf",
        ".nan",
        "0.0001",
        "-1",
    ] {
        for field in ["connect", "send", "read"] {
            assert_rejected(
                &with_upstream(
                    "{ \"127.0.0.1:8080\": 1 }",
                    &format!("      timeout: {{ {field}: {v} }}\n"),
                ),
                &[],
                &format!("routes[0].upstream.timeout.{field}"),
                &["seconds", "86400"],
            );
        }
        let checks =
            |active: &str| with_multi("", &format!("            checks: {{ active: {active} }}\n"));
        let base = "routes[0].plugins.ai-proxy-multi.instances[0].checks";
        assert_rejected(
            &checks(&format!("{{ timeout: {v} }}")),
            &[],
            &format!("{base}.active.timeout"),
            &["86400"],
        );
        assert_rejected(
            &checks(&format!("{{ healthy: {{ interval: {v} }} }}")),
            &[],
            &format!("{base}.active.healthy.interval"),
            &["86400"],
        );
        assert_rejected(
            &checks(&format!("{{ unhealthy: {{ interval: {v} }} }}")),
            &[],
            &format!("{base}.active.unhealthy.interval"),
            &["86400"],
        );
        assert_rejected(
            &with_multi(
                "",
                &format!("            checks: {{ passive: {{ cooldown: {v} }} }}\n"),
            ),
            &[],
            &format!("{base}.passive.cooldown"),
            &["86400"],
        );
    }
    // cooldown 0 switches the cool-down off.
    assert_valid(
        &with_multi("", "            checks: { passive: { cooldown: 0 } }\n"),
        &[],
    );
}

#[test]
fn millisecond_fields_beyond_a_day_are_refused() {
    for v in ["86400001", "18446744073709551615"] {
        for field in ["timeout", "keepalive_timeout"] {
            assert_rejected(
                &with_plugin(&format!("{OPENAI}        {field}: {v}\n")),
                &[],
                &format!("routes[0].plugins.ai-proxy.{field}"),
                &["86400000"],
            );
            assert_rejected(
                &with_multi(&format!("        {field}: {v}\n"), ""),
                &[],
                &format!("routes[0].plugins.ai-proxy-multi.instances[0].{field}"),
                &["86400000"],
            );
        }
        assert_rejected(
            &with_multi(&format!("        retry_on_failure_within_ms: {v}\n"), ""),
            &[],
            "routes[0].plugins.ai-proxy-multi.retry_on_failure_within_ms",
            &["86400000"],
        );
    }
    // Past u64 is not a number this field can hold at all.
    assert_rejected(
        &with_plugin(&format!("{OPENAI}        timeout: 18446744073709551616\n")),
        &[],
        "routes[0].plugins.ai-proxy.timeout",
        &[],
    );
}

#[test]
fn max_retries_of_u32_max_is_accepted_and_capped() {
    // `max_retries + 1` overflowed; retries are capped by the number of instances anyway.
    assert_valid(&with_multi("        max_retries: 4294967295\n", ""), &[]);
}

#[test]
fn weights_beyond_the_maximum_are_refused() {
    let base = "routes[0].plugins.ai-proxy-multi";
    assert_valid(
        &with_multi("", "").replace("weight: 1", "weight: 10000"),
        &[],
    );
    assert_rejected(
        &with_multi("", "").replace("weight: 1", "weight: 10001"),
        &[],
        &format!("{base}.instances[0].weight"),
        &["10000"],
    );
    assert_rejected(
        &with_multi("", "").replace("weight: 1", "weight: 4294967295"),
        &[],
        &format!("{base}.instances[0].weight"),
        &[],
    );
    // chash: each unit of weight is 160 points on the ring; one tier adds up to 10,000 at most.
    let two = |w2: u32, prio2: i64| {
        with_multi(
            "        balancer: { algorithm: chash, hash_on: header, key: X-User }\n",
            &format!("          - name: b\n            provider: openai\n            weight: {w2}\n            priority: {prio2}\n            auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n"),
        )
        .replace("weight: 1\n", "weight: 6000\n")
    };
    assert_rejected(
        &two(5000, 0),
        &[],
        &format!("{base}.instances"),
        &["chash", "10000"],
    );
    assert_valid(&two(4000, 0), &[]);
    // Tiers are separate rings.
    assert_valid(&two(5000, 1), &[]);
}

#[test]
fn gcp_token_lifetimes_beyond_a_day_are_refused() {
    let sa = serde_json::json!({
        "private_key": include_str!("../fixtures/gcp-test-key.pkcs8.pem"),
        "client_email": "a@b.iam.gserviceaccount.com",
    })
    .to_string();
    let vertex = |extra: &str| {
        with_plugin(&format!(
            "        provider: vertex-ai\n        provider_conf: {{ project_id: p, region: us-central1 }}\n        auth: {{ gcp: {{ service_account_json: {}{extra} }} }}\n",
            serde_json::to_string(&sa).unwrap()
        ))
    };
    let base = "routes[0].plugins.ai-proxy.auth.gcp";
    assert_valid(&vertex(", max_ttl: 86400, expire_early_secs: 86400"), &[]);
    assert_valid(&vertex(", expire_early_secs: 0"), &[]);
    for v in ["86401", "18446744073709551615"] {
        assert_rejected(
            &vertex(&format!(", max_ttl: {v}")),
            &[],
            &format!("{base}.max_ttl"),
            &["86400"],
        );
        assert_rejected(
            &vertex(&format!(", expire_early_secs: {v}")),
            &[],
            &format!("{base}.expire_early_secs"),
            &["86400"],
        );
    }
    assert_rejected(
        &vertex(", max_ttl: 0"),
        &[],
        &format!("{base}.max_ttl"),
        &["at least 1"],
    );
}

#[test]
fn port_zero_and_impossible_statuses_are_refused() {
    assert_rejected(
        &with_upstream("{ \"127.0.0.1:0\": 1 }", ""),
        &[],
        "routes[0].upstream.nodes.127.0.0.1:0",
        &[],
    );
    assert_rejected(
        &with_upstream("[{ host: 127.0.0.1, port: 0 }]", ""),
        &[],
        "routes[0].upstream.nodes[0].port",
        &["65535"],
    );
    // Past u16: serde refuses it (the untagged `nodes` forms leave only the list's path).
    assert_rejected(
        &with_upstream("[{ host: 127.0.0.1, port: 65536 }]", ""),
        &[],
        "routes[0].upstream.nodes",
        &[],
    );
    assert_valid(
        &with_upstream("[{ host: 127.0.0.1, port: 65535 }]", ""),
        &[],
    );
    let base = "routes[0].plugins.ai-proxy-multi.instances[0].checks";
    assert_rejected(
        &with_multi("", "            checks: { active: { port: 0 } }\n"),
        &[],
        &format!("{base}.active.port"),
        &["65535"],
    );
    assert_rejected(
        &with_multi(
            "",
            "            checks: { passive: { healthy: { http_statuses: [200, 700] } } }\n",
        ),
        &[],
        &format!("{base}.passive.healthy.http_statuses[1]"),
        &["700"],
    );
    assert_rejected(
        &with_multi(
            "",
            "            checks: { active: { unhealthy: { http_statuses: [99] } } }\n",
        ),
        &[],
        &format!("{base}.active.unhealthy.http_statuses[0]"),
        &["99"],
    );
    assert_rejected(
        &with_multi("        fallback_http_statuses: [429, 65535]\n", ""),
        &[],
        "routes[0].plugins.ai-proxy-multi.fallback_http_statuses[1]",
        &["65535"],
    );
}

#[test]
fn max_body_size_beyond_a_gibibyte_is_refused() {
    let cfg = |v: &str| {
        with_plugin(OPENAI).replace(
            "  listen: 127.0.0.1:9080\n",
            &format!("  listen: 127.0.0.1:9080\n  max_body_size: {v}\n"),
        )
    };
    assert_valid(&cfg("1073741824"), &[]);
    for v in ["1073741825", "18446744073709551615", "0"] {
        assert_rejected(&cfg(v), &[], "gateway.max_body_size", &["1073741824"]);
    }
}

#[test]
fn pingora_server_numbers_that_would_panic_at_start_are_refused() {
    let cfg = |server: &str| format!("server:\n{server}{}", with_plugin(OPENAI));
    assert_valid(
        &cfg("  threads: 1024\n  upstream_keepalive_pool_size: 1024\n"),
        &[],
    );
    assert_rejected(&cfg("  threads: 1025\n"), &[], "server.threads", &["1024"]);
    assert_rejected(
        &cfg("  threads: 2\n  upstream_keepalive_pool_size: 18446744073709551615\n"),
        &[],
        "server.upstream_keepalive_pool_size",
        &["preallocated"],
    );
    // tokio panics on 0 blocking threads.
    assert_rejected(
        &cfg("  max_blocking_threads: 0\n"),
        &[],
        "server.max_blocking_threads",
        &[],
    );
    assert_rejected(
        &cfg("  listener_tasks_per_fd: 0\n"),
        &[],
        "server.listener_tasks_per_fd",
        &[],
    );
    assert_rejected(
        &cfg("  upstream_connect_offload_threadpools: 100000\n  upstream_connect_offload_thread_per_pool: 100000\n"),
        &[],
        "server.upstream_connect_offload_threadpools",
        &[],
    );
    assert_rejected(
        &cfg("  graceful_shutdown_timeout_seconds: 18446744073709551615\n"),
        &[],
        "server.graceful_shutdown_timeout_seconds",
        &["86400"],
    );
}

#[test]
fn a_config_at_the_largest_accepted_values_starts_and_serves() {
    let ok = Mock::start("ok");
    // A token endpoint that says its tokens live for u64::MAX seconds (the cache deadline
    // `now + ttl` must not overflow).
    let tokens = Mock::start_with("tokens", &["--token-ttl", "18446744073709551615"]);
    let failing = Mock::start_with("failing", &["--status", "500"]);
    let sa = serde_json::json!({
        "private_key": include_str!("../fixtures/gcp-test-key.pkcs8.pem"),
        "client_email": "max@test-project.iam.gserviceaccount.com",
        "token_uri": tokens.url("/token"),
    })
    .to_string();
    let day_s = "86400";
    let day_ms = "86400000";
    let u32_max = u32::MAX;
    let i64_max = i64::MAX;
    let i64_min = i64::MIN;
    let resources = format!(
        r#"
routes:
  - id: single
    uri: /single
    priority: {i64_max}
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: "Bearer k" }} }}
        override: {{ endpoint: "{ok_chat}" }}
        timeout: {day_ms}
        keepalive_timeout: {day_ms}
  - id: vertex
    uri: /vertex
    priority: {i64_min}
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth: {{ gcp: {{ service_account_json: {sa}, max_ttl: {day_s}, expire_early_secs: {day_s} }} }}
        override: {{ endpoint: "{ok_chat}" }}
  - id: multi
    uri: /multi
    plugins:
      ai-proxy-multi:
        fallback_strategy: http_5xx
        max_retries: {u32_max}
        retry_on_failure_within_ms: {day_ms}
        timeout: {day_ms}
        keepalive_timeout: {day_ms}
        instances:
          - name: bad
            provider: openai-compatible
            weight: 10000
            priority: {i64_max}
            auth: {{ header: {{ Authorization: "Bearer bad" }} }}
            override: {{ endpoint: "{failing_chat}" }}
            checks:
              passive:
                cooldown: {day_s}
                unhealthy: {{ http_failures: 1, tcp_failures: {u32_max}, timeouts: {u32_max} }}
          - name: good
            provider: openai-compatible
            weight: 10000
            priority: {i64_min}
            auth: {{ header: {{ Authorization: "Bearer good" }} }}
            override: {{ endpoint: "{ok_chat}" }}
            checks:
              active:
                timeout: {day_s}
                http_path: /health
                healthy: {{ interval: {day_s}, successes: {u32_max} }}
                unhealthy: {{ interval: {day_s}, http_failures: {u32_max}, tcp_failures: {u32_max}, timeouts: {u32_max} }}
              passive:
                unhealthy: {{ http_failures: {u32_max}, tcp_failures: {u32_max}, timeouts: {u32_max} }}
  - id: chash
    uri: /chash
    plugins:
      ai-proxy-multi:
        balancer: {{ algorithm: chash, hash_on: header, key: X-User }}
        instances:
          - name: only
            provider: openai-compatible
            weight: 10000
            auth: {{ header: {{ Authorization: "Bearer c" }} }}
            override: {{ endpoint: "{ok_chat}" }}
  - id: plain
    uri: /anything
    upstream:
      timeout: {{ connect: {day_s}, send: {day_s}, read: {day_s} }}
      nodes: [{{ host: 127.0.0.1, port: {ok_port}, weight: {u32_max} }}]
"#,
        sa = serde_json::to_string(&sa).unwrap(),
        ok_chat = ok.chat_url(),
        failing_chat = failing.chat_url(),
        ok_port = ok.port,
    );
    let gw = Gateway::start_with(
        &resources,
        GatewayOpts {
            gateway_extra: "  max_body_size: 1073741824\n",
            ..Default::default()
        },
    );
    let body = chat_body("largest values");
    for path in ["/single", "/vertex", "/multi", "/chash", "/anything"] {
        let r = gw.chat_with(path, &[("X-User", "u1")], &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    // The failing instance was cooled down for a day after its one failure: the second request
    // goes straight to the good one.
    let r = gw.chat("/multi", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(failing.llm_requests().len(), 1);
    assert_eq!(
        ok.llm_requests()
            .iter()
            .filter(|r| r["headers"]["authorization"] == "Bearer good")
            .count(),
        2
    );
    // The token was used although its lifetime was absurd.
    assert_eq!(
        ok.llm_requests()
            .iter()
            .filter(|r| r["headers"]["authorization"] == "Bearer mock-access-token-1")
            .count(),
        1
    );
    let log = gw.error_log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn route_fields_aigate_does_not_act_on_are_refused_not_ignored() {
    let route = |extra: &str| {
        format!("gateway:\n  listen: 127.0.0.1:9080\nroutes:\n  - id: u\n    uri: /u\n    upstream: {{ nodes: {{ \"127.0.0.1:8080\": 1 }} }}\n{extra}")
    };
    assert_rejected(
        &route("    timeout: { connect: 3, send: 3, read: 3 }\n"),
        &[],
        "routes[0].timeout",
        &["upstream.timeout"],
    );
    assert_rejected(
        &route("    enable_websocket: true\n"),
        &[],
        "routes[0].enable_websocket",
        &["WebSocket"],
    );
    assert_valid(&route("    enable_websocket: false\n"), &[]);
    assert_rejected(
        "gateway:\n  listen: 127.0.0.1:9080\nservices:\n  - id: s\n    enable_websocket: true\n    upstream: { nodes: { \"127.0.0.1:8080\": 1 } }\nroutes: []\n",
        &[],
        "services[0].enable_websocket",
        &["WebSocket"],
    );
}

/// APISIX's pool sizes have nothing to size in aigate (one connection pool per process, one
/// multiplexed Redis connection): APISIX's defaults, which exported configs carry, load; any
/// other value is refused with its path instead of being silently ignored. An upstream's
/// `keepalive_pool.idle_timeout` does something (the idle time of its pooled connections).
#[test]
fn pool_sizes_are_accepted_at_apisix_defaults_and_refused_otherwise() {
    assert_valid(
        &with_plugin(&format!("{OPENAI}        keepalive_pool: 30\n")),
        &[],
    );
    assert_rejected(
        &with_plugin(&format!("{OPENAI}        keepalive_pool: 50\n")),
        &[],
        "routes[0].plugins.ai-proxy.keepalive_pool",
        &["server.upstream_keepalive_pool_size", "not 50"],
    );
    let multi = |pool: &str| with_multi(&format!("        keepalive_pool: {pool}\n"), "");
    assert_valid(&multi("30"), &[]);
    assert_rejected(
        &multi("5"),
        &[],
        "routes[0].plugins.ai-proxy-multi.keepalive_pool",
        &["one connection pool per process"],
    );
    let upstream = |pool: &str| {
        format!(
            "routes:\n  - id: u\n    uri: /u\n    upstream:\n      nodes: {{\"127.0.0.1:1\": 1}}\n      keepalive_pool: {pool}\n"
        )
    };
    assert_valid(
        &upstream("{size: 320, idle_timeout: 30, requests: 1000}"),
        &[],
    );
    assert_rejected(
        &upstream("{size: 10}"),
        &[],
        "routes[0].upstream.keepalive_pool.size",
        &["default 320"],
    );
    assert_rejected(
        &upstream("{requests: 5}"),
        &[],
        "routes[0].upstream.keepalive_pool.requests",
        &["default 1000"],
    );
    assert_rejected(
        &upstream("{idle_timeout: 0}"),
        &[],
        "routes[0].upstream.keepalive_pool.idle_timeout",
        &[],
    );
    let quota = |extra: &str| {
        format!(
            "gateway:\n  listen: 127.0.0.1:9080\nroutes:\n  - id: r1\n    uri: /v1/chat/completions\n    plugins:\n      ai-rate-limiting: {{limit: 10, time_window: 60, policy: redis, redis_host: localhost{extra}}}\n      ai-proxy:\n{OPENAI}"
        )
    };
    assert_valid(
        &quota(", redis_keepalive_timeout: 10000, redis_keepalive_pool: 100"),
        &[],
    );
    assert_rejected(
        &quota(", redis_keepalive_pool: 500"),
        &[],
        "routes[0].plugins.ai-rate-limiting.redis_keepalive_pool",
        &["default 100", "not 500"],
    );
}
