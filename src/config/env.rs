//! `${VAR}` / `${VAR:-default}` substitution over the raw config text.
//!
//! Substitution is textual (before YAML parsing) so a variable can stand anywhere: a port, a list,
//! part of a URL. Full-line comments are left alone so documenting a variable in a comment never
//! makes it mandatory. `$${` escapes a literal `${`.

use std::collections::HashSet;

/// The substituted text plus every value that came from the environment, so error messages can
/// redact them (an API key put in the wrong field must not be echoed back by a parse error).
pub struct Substituted {
    pub text: String,
    pub secrets: Vec<String>,
}

pub fn substitute(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Substituted, String> {
    let mut out = String::with_capacity(input.len());
    let mut secrets = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (lineno, line) in input.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
                continue;
            }
            if !tail.starts_with("${") {
                out.push('$');
                rest = &tail[1..];
                continue;
            }
            let Some(end) = tail.find('}') else {
                return Err(format!("line {}: unterminated ${{ in config", lineno + 1));
            };
            let expr = &tail[2..end];
            let (name, default) = match expr.find(":-") {
                Some(i) => (&expr[..i], Some(&expr[i + 2..])),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "line {}: invalid variable name in ${{{expr}}}",
                    lineno + 1
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => {
                    if v.len() >= 4 && seen.insert(v.clone()) {
                        secrets.push(v.clone());
                    }
                    out.push_str(&v);
                }
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "line {}: environment variable {name} is not set (use ${{{name}:-default}} to give a default)",
                        lineno + 1
                    ))
                }
            }
            rest = &tail[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(Substituted { text: out, secrets })
}

/// Replace every environment-provided value in `msg` with `***`.
pub fn redact(msg: &str, secrets: &[String]) -> String {
    let mut msg = msg.to_string();
    for s in secrets {
        if msg.contains(s.as_str()) {
            msg = msg.replace(s.as_str(), "***");
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-secret".into()),
            "PORT" => Some("9080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_set_default_and_escape() {
        let s = substitute(
            "a: ${KEY}\nb: ${NOPE:-x}\nc: $${KEY}\nd: ${EMPTY:-y}\ne: $5\n",
            &env,
        )
        .unwrap();
        assert_eq!(s.text, "a: sk-secret\nb: x\nc: ${KEY}\nd: \ne: $5\n");
        assert_eq!(
            s.secrets,
            vec!["sk-secret".to_string(), "9080".to_string()]
                .into_iter()
                .take(1)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn unset_without_default_is_an_error_naming_the_variable() {
        let e = substitute("x: 1\nkey: ${AIGATE_ADMIN_KEY}\n", &env)
            .err()
            .unwrap();
        assert!(
            e.contains("line 2") && e.contains("AIGATE_ADMIN_KEY"),
            "{e}"
        );
    }

    #[test]
    fn comments_are_not_substituted() {
        let s = substitute("  # set ${UNSET_VAR} to change\nk: v\n", &env).unwrap();
        assert!(s.text.contains("${UNSET_VAR}"));
    }

    #[test]
    fn redacts_env_values() {
        assert_eq!(
            redact("bad value sk-secret here", &["sk-secret".into()]),
            "bad value *** here"
        );
    }
}
