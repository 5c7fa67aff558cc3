//! IP / CIDR matching for `remote_addrs` and the `ipmatch` vars operator.
//!
//! Written by hand (a few lines) instead of pulling in a crate. IPv4-mapped
//! IPv6 addresses (`::ffff:10.0.0.1`) are folded to IPv4 on both sides, because
//! a dual-stack listener reports IPv4 clients that way and a rule written as
//! `10.0.0.0/8` is meant to match them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One network: an address with its prefix length, stored pre-masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

/// A request address in the form `Cidr::contains` wants (already folded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ip {
    V4(u32),
    V6(u128),
}

impl Ip {
    pub fn from_addr(addr: IpAddr) -> Ip {
        match addr {
            IpAddr::V4(a) => Ip::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Ip::V4(u32::from(v4)),
                None => Ip::V6(u128::from(a)),
            },
        }
    }

    /// The address as nginx would print `$remote_addr` (mapped IPv4 folded).
    pub fn to_ip_addr(self) -> IpAddr {
        match self {
            Ip::V4(a) => IpAddr::V4(Ipv4Addr::from(a)),
            Ip::V6(a) => IpAddr::V6(Ipv6Addr::from(a)),
        }
    }
}

fn mask_v4(len: u32) -> u32 {
    // `checked_shl` keeps /0 (shift by 32) from overflowing.
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

fn mask_v6(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

impl Cidr {
    /// Parses `10.0.0.1`, `10.0.0.0/8`, `::1`, `2001:db8::/32`. Host bits
    /// below the prefix are ignored (masked), as lua-resty-ipmatcher does.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                // Digits only: `u32::from_str` would also accept "+8".
                if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("bad prefix length in {s:?}"));
                }
                (
                    a,
                    Some(
                        l.parse::<u32>()
                            .map_err(|_| format!("bad prefix length in {s:?}"))?,
                    ),
                )
            }
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        match ip {
            IpAddr::V4(a) => {
                let len = len.unwrap_or(32);
                if len > 32 {
                    return Err(format!("prefix length {len} is too long for IPv4 in {s:?}"));
                }
                let mask = mask_v4(len);
                Ok(Cidr::V4 {
                    net: u32::from(a) & mask,
                    mask,
                })
            }
            IpAddr::V6(a) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(format!("prefix length {len} is too long for IPv6 in {s:?}"));
                }
                // `::ffff:10.0.0.0/104` is the IPv4 network 10.0.0.0/8 in disguise;
                // requests are folded to IPv4, so fold the rule the same way.
                if len >= 96 {
                    if let Some(v4) = a.to_ipv4_mapped() {
                        let mask = mask_v4(len - 96);
                        return Ok(Cidr::V4 {
                            net: u32::from(v4) & mask,
                            mask,
                        });
                    }
                }
                let mask = mask_v6(len);
                Ok(Cidr::V6 {
                    net: u128::from(a) & mask,
                    mask,
                })
            }
        }
    }

    #[inline]
    pub fn contains(&self, ip: Ip) -> bool {
        match (*self, ip) {
            (Cidr::V4 { net, mask }, Ip::V4(a)) => a & mask == net,
            (Cidr::V6 { net, mask }, Ip::V6(a)) => a & mask == net,
            _ => false,
        }
    }
}

/// Parses a textual IP the way a variable value arrives (`ipmatch` on a header
/// such as `http_x_real_ip`). Brackets around IPv6 are tolerated.
pub fn parse_ip(s: &str) -> Option<Ip> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().ok().map(Ip::from_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ip {
        parse_ip(s).unwrap()
    }

    #[test]
    fn v4() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let single = Cidr::parse("192.168.1.7").unwrap();
        assert!(single.contains(ip("192.168.1.7")));
        assert!(!single.contains(ip("192.168.1.8")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        // host bits are masked away
        assert!(Cidr::parse("10.9.9.9/8").unwrap().contains(ip("10.0.0.1")));
        // IPv4-mapped request address matches an IPv4 rule
        assert!(c.contains(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn v6() {
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains(ip("2001:db8:1::5")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("fe80::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("[::1]")));
        // mapped rule folds to v4
        assert!(Cidr::parse("::ffff:10.0.0.0/104")
            .unwrap()
            .contains(ip("10.3.2.1")));
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
            "10.0.0.0/8/9",
            "010.0.0.1",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
