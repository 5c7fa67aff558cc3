//! A tiny authoritative DNS server on UDP for the tests: A and AAAA answers from a table the
//! test changes at will, NXDOMAIN for unknown names, optional silence and delay, and a count of
//! the queries it received. Real DNS wire format over a real socket, so the gateway's own
//! resolver (hickory) is exercised end to end.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    records: HashMap<String, (Vec<IpAddr>, u32)>,
    silent: HashSet<String>,
    delay: Duration,
    /// (name, qtype) -> ids of the queries received (a resolver may resend one query, with
    /// the same id, while waiting: that is still one look-up).
    queries: HashMap<(String, u16), HashSet<u16>>,
}

pub struct DnsServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

pub const A: u16 = 1;
pub const AAAA: u16 = 28;

impl DnsServer {
    pub fn start() -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let state: Arc<Mutex<State>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let sock = Arc::new(sock);
            let mut buf = [0u8; 1500];
            while !sp.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let query = buf[..n].to_vec();
                let Some((name, qtype, qend)) = parse_question(&query) else {
                    continue;
                };
                let (answer, delay) = {
                    let mut s = st.lock().unwrap();
                    s.queries
                        .entry((name.clone(), qtype))
                        .or_default()
                        .insert(u16::from_be_bytes([query[0], query[1]]));
                    if s.silent.contains(&name) {
                        continue;
                    }
                    (
                        build_answer(&query, qend, s.records.get(&name), qtype),
                        s.delay,
                    )
                };
                let sock = sock.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _ = sock.send_to(&answer, from);
                });
            }
        });
        DnsServer { port, state, stop }
    }

    /// `name` answers with `ips` (A or AAAA by family) and `ttl` seconds.
    pub fn set(&self, name: &str, ips: &[&str], ttl: u32) {
        let ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        let mut s = self.state.lock().unwrap();
        s.silent.remove(name);
        s.records.insert(name.to_string(), (ips, ttl));
    }

    /// Queries for `name` get no answer at all.
    pub fn silence(&self, name: &str) {
        self.state.lock().unwrap().silent.insert(name.to_string());
    }

    /// Every answer waits this long.
    pub fn delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    /// Distinct queries received for `name` of type `qtype` (A or AAAA).
    pub fn queries(&self, name: &str, qtype: u16) -> usize {
        let s = self.state.lock().unwrap();
        s.queries
            .get(&(name.to_string(), qtype))
            .map_or(0, |ids| ids.len())
    }

    /// `gateway:` lines pointing the gateway's resolver here.
    pub fn gateway_conf(&self) -> String {
        format!("  dns:\n    nameservers: [\"127.0.0.1:{}\"]\n", self.port)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The question's name (lower case, no trailing dot), type, and where the question ends.
fn parse_question(q: &[u8]) -> Option<(String, u16, usize)> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

fn build_answer(q: &[u8], qend: usize, rec: Option<&(Vec<IpAddr>, u32)>, qtype: u16) -> Vec<u8> {
    let rd = q[2] & 0x01;
    // QR, AA, RD as asked, RA; NXDOMAIN when the name is unknown.
    let rcode = if rec.is_none() { 3 } else { 0 };
    let answers: Vec<IpAddr> = rec
        .map(|(ips, _)| {
            ips.iter()
                .copied()
                .filter(|ip| match qtype {
                    A => ip.is_ipv4(),
                    AAAA => ip.is_ipv6(),
                    _ => false,
                })
                .collect()
        })
        .unwrap_or_default();
    let ttl = rec.map(|r| r.1).unwrap_or(0);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[0..2]);
    out.push(0x84 | rd);
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q[12..qend]);
    for ip in answers {
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    out
}
