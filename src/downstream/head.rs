//! Finding the end of an HTTP/1 request header in bytes that arrive in arbitrary pieces.
//!
//! The header ends at the first empty line after a non-empty one. Like httparse (which Pingora
//! parses with), lines may end in CRLF or a bare LF, and empty lines before the request line are
//! skipped. Pure and incremental: `feed` sees each new piece once.

/// Incremental scanner for the end of a request header.
#[derive(Debug, Default, Clone)]
pub struct HeadEnd {
    /// Bytes fed so far.
    consumed: usize,
    /// The current (unfinished) line has a byte other than CR.
    line_has_content: bool,
    /// A non-empty line (the request line) has been seen.
    started: bool,
}

impl HeadEnd {
    /// Feed the next bytes; `Some(n)`: the header ends after the first `n` bytes of the whole
    /// stream (counted from the first `feed`).
    pub fn feed(&mut self, data: &[u8]) -> Option<usize> {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let content = self.line_has_content || data[start..nl].iter().any(|&b| b != b'\r');
            self.line_has_content = false;
            if content {
                self.started = true;
            } else if self.started {
                return Some(self.consumed + nl + 1);
            }
            start = nl + 1;
        }
        self.line_has_content |= data[start..].iter().any(|&b| b != b'\r');
        self.consumed += data.len();
        None
    }

    /// Whether any byte of a request has arrived (leading empty lines do not count).
    pub fn started(&self) -> bool {
        self.started || self.line_has_content
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: scan the whole buffer at once, line by line.
    fn reference(buf: &[u8]) -> Option<usize> {
        let mut started = false;
        let mut line_start = 0;
        for (i, &b) in buf.iter().enumerate() {
            if b == b'\n' {
                let empty = buf[line_start..i].iter().all(|&c| c == b'\r');
                if !empty {
                    started = true;
                } else if started {
                    return Some(i + 1);
                }
                line_start = i + 1;
            }
        }
        None
    }

    fn feed_in_pieces(buf: &[u8], cuts: &[usize]) -> Option<usize> {
        let mut s = HeadEnd::default();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&buf.len())) {
            if let Some(n) = s.feed(&buf[prev..c]) {
                return Some(n);
            }
            prev = c;
        }
        None
    }

    #[test]
    fn ends() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", Some(27)),
            (b"GET / HTTP/1.1\nHost: a\n\nbody", Some(24)),
            (b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", Some(22)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
            (b"GET / HTTP/1.1\r\n\r", None),
            (b"\r\n\n", None),
            (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", Some(26)),
        ];
        for (buf, want) in cases {
            assert_eq!(reference(buf), *want, "{:?}", String::from_utf8_lossy(buf));
            let mut s = HeadEnd::default();
            assert_eq!(s.feed(buf), *want, "{:?}", String::from_utf8_lossy(buf));
        }
        let mut s = HeadEnd::default();
        s.feed(b"\r\n");
        assert!(!s.started());
        s.feed(b"G");
        assert!(s.started());
    }

    /// Any split of any mix of request-ish bytes finds the same end as the whole-buffer scan.
    #[test]
    fn every_split_agrees_with_the_reference() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_4ead);
        let alphabet: &[&[u8]] = &[b"\r\n", b"\n", b"\r", b"a", b"GET / HTTP/1.1", b": ", b"x"];
        for _ in 0..4000 {
            let mut buf = Vec::new();
            for _ in 0..rng.usize(0..14) {
                buf.extend_from_slice(alphabet[rng.usize(..alphabet.len())]);
            }
            let want = reference(&buf);
            let mut cuts: Vec<usize> = (0..rng.usize(0..5))
                .map(|_| rng.usize(0..=buf.len()))
                .collect();
            cuts.sort_unstable();
            assert_eq!(
                feed_in_pieces(&buf, &cuts),
                want,
                "{:?} cut at {cuts:?}",
                String::from_utf8_lossy(&buf)
            );
            // Byte by byte too.
            let all: Vec<usize> = (1..buf.len()).collect();
            assert_eq!(feed_in_pieces(&buf, &all), want);
        }
    }
}
