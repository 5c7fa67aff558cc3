//! A provider request's header and body in one TCP segment.
//!
//! Pingora's HTTP/1 client writes and flushes the request header by itself, then writes the body:
//! two `sendto`, two segments. When the gateway already holds the whole body (every LLM call, and
//! a plain route's body read for `post_arg` matching), the second segment is pure overhead: on the
//! wire, one more packet for the provider to wait for; on the gateway's core, one more trip
//! through the TCP stack (on loopback the receiver's half runs on the sender's core too), a wake
//! of the peer, and one more ACK to take in. Under wrk that was ~3.6 µs of the ~42 µs an ai-proxy
//! request cost (median of 8 interleaved runs, −9%).
//!
//! Pingora 0.9 has no hook between its header and body writes, and its pool cannot hold a stream
//! of aigate's own that could merge them (cloudflare/pingora#883). So the socket is corked
//! (`TCP_CORK`) when Pingora hands it over (`connected_to_upstream`), which makes the kernel hold
//! partial segments, and uncorked the moment Pingora is done writing the body: the body Pingora
//! gets in `request_body_filter` is wrapped (`uncork_when_sent`) so that dropping it uncorks, and
//! Pingora drops a body piece right after writing it. No timer, no extra task, nothing to
//! schedule: the uncork happens inside the same poll, after the write. Should the body never be
//! written (the attempt failed), dropping it uncorks all the same; and the kernel never holds
//! corked data longer than 200 ms.
//!
//! The gateway's own client (`net::client`: `passthrough`'s LLM call, GCP token grants) corks the
//! same way around its own two writes and uncorks right after them.
//!
//! A connection never goes back to Pingora's pool corked: Pingora pools it only after the whole
//! exchange, so after the body's last piece, when the uncork was scheduled. An attempt that fails
//! before its body leaves its socket corked; Pingora closes that one (the kernel sends what it
//! holds), and the next attempt's connect uncorks it anyway, so a request never has more than one
//! corked socket (`RequestCtx::corked`).
//!
//! Only Linux has `TCP_CORK`; elsewhere these are no-ops.

use std::os::unix::io::RawFd;

use bytes::Bytes;

/// Cork `fd`; false if the kernel refused (not a TCP socket).
pub fn cork(fd: RawFd) -> bool {
    set(fd, 1)
}

/// Uncork `fd` now: what the kernel holds goes out. Harmless on a socket that isn't corked.
pub fn uncork(fd: RawFd) {
    set(fd, 0);
}

/// `body`, as bytes that uncork `fd` when the last reference to them drops: once Pingora has
/// written them (see the module doc). The data is shared, not copied. The fd is a plain number:
/// if its connection was closed (and the number reused) before the drop, the uncork lands on
/// another socket, where it is a harmless push (or an error, ignored, on something not TCP).
pub fn uncork_when_sent(fd: RawFd, body: Bytes) -> Bytes {
    Bytes::from_owner(UncorkOnDrop { fd, body })
}

struct UncorkOnDrop {
    fd: RawFd,
    body: Bytes,
}

impl AsRef<[u8]> for UncorkOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for UncorkOnDrop {
    fn drop(&mut self) {
        uncork(self.fd);
    }
}

#[cfg(target_os = "linux")]
fn set(fd: RawFd, on: libc::c_int) -> bool {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; a bad fd is an error
    // return, not undefined behaviour.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn set(_fd: RawFd, _on: i32) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;
    use std::time::Duration;

    /// What the peer can read within `wait`.
    fn readable(r: &mut TcpStream, wait: Duration) -> Vec<u8> {
        r.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 64];
        match r.read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    /// A connected (writer, reader) pair, the writer corked with `head ` written.
    fn corked_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        w.set_nodelay(true).unwrap();
        let (r, _) = l.accept().unwrap();
        assert!(cork(w.as_raw_fd()));
        w.write_all(b"head ").unwrap();
        (w, r)
    }

    #[test]
    fn corked_writes_wait_for_the_uncork_and_arrive_together() {
        let (mut w, mut r) = corked_pair();
        w.write_all(b"body").unwrap();
        assert!(readable(&mut r, Duration::from_millis(50)).is_empty());
        uncork(w.as_raw_fd());
        assert_eq!(readable(&mut r, Duration::from_secs(5)), b"head body");
        // Uncorked, a write goes out at once again.
        w.write_all(b"next").unwrap();
        assert_eq!(readable(&mut r, Duration::from_secs(5)), b"next");
    }

    #[test]
    fn not_a_tcp_socket_is_refused_quietly() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!cork(f.as_raw_fd()));
        uncork(f.as_raw_fd());
        assert!(!cork(-1));
    }

    #[test]
    fn the_wrapped_body_uncorks_when_its_last_reference_drops() {
        let (mut w, mut r) = corked_pair();
        let body = uncork_when_sent(w.as_raw_fd(), Bytes::from_static(b"body"));
        let copy = body.clone();
        w.write_all(&body).unwrap();
        drop(body);
        // A clone still holds it: still corked.
        assert!(readable(&mut r, Duration::from_millis(50)).is_empty());
        assert_eq!(&copy[..], b"body");
        drop(copy);
        // Well within the kernel's own 200 ms limit: the drop did it.
        assert_eq!(readable(&mut r, Duration::from_millis(100)), b"head body");
    }
}
