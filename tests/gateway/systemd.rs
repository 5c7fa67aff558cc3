//! `systemd/aigate.service` is a valid unit (`systemd-analyze verify`, where the machine has it),
//! and its commands and the config settings it documents agree with the binary.

use std::process::Command;

use crate::harness::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/aigate.service");

#[test]
fn the_unit_verifies_and_documents_settings_the_binary_accepts() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    // The commands it runs exist as options.
    for needle in [" -d -c ", " -u -d -c ", " -c /etc/aigate/config.yaml -t"] {
        assert!(unit.contains(needle), "{needle}");
    }
    // The server section its header asks for is a valid aigate config.
    let server: String = unit
        .lines()
        .skip_while(|l| !l.starts_with("#   server:"))
        .take_while(|l| l.starts_with("#   ") || l.starts_with("#     "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    assert!(
        server.contains("pid_file: /run/aigate/aigate.pid"),
        "{server}"
    );
    let text = format!("{server}gateway:\n  listen: 127.0.0.1:9999\nroutes: []\n");
    let (ok, out) = check_config(&text, &[]);
    assert!(ok, "{text}\n{out}");

    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here: the unit was not verified");
        return;
    };
    assert!(probe.status.success());
    // Verified as installed, with the binary where the unit expects it.
    let dir = scratch_dir();
    let path = dir.join("aigate.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/aigate", AIGATE)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("aigate.service:"),
        "warnings about the unit: {said}"
    );
}
