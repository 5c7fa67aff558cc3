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
//! partial segments, and uncorked right after Pingora has written the body: `request_body_filter`
//! sees the body's last piece just before Pingora writes it, and schedules the uncork as a task.
//! Tokio runs a task spawned from a worker in that worker's LIFO slot, as soon as the current task
//! yields, which it does when it waits for the provider's answer, after the body write. If it
//! runs earlier (another worker, or the LIFO slot is busy), the header just goes out alone, as
//! without the cork; and the kernel never holds a corked segment longer than 200 ms.
//!
//! A connection never goes back to Pingora's pool corked: Pingora pools it only after the whole
//! exchange, so after the body's last piece, when the uncork was scheduled. An attempt that fails
//! before its body leaves its socket corked; Pingora closes that one (the kernel sends what it
//! holds), and the next attempt's connect uncorks it anyway, so a request never has more than one
//! corked socket (`RequestCtx::corked`).
//!
//! Only Linux has `TCP_CORK`; elsewhere these are no-ops.

use std::os::unix::io::RawFd;

/// Cork `fd`; false if the kernel refused (not a TCP socket).
pub fn cork(fd: RawFd) -> bool {
    set(fd, 1)
}

/// Uncork `fd` now: what the kernel holds goes out. Harmless on a socket that isn't corked.
pub fn uncork(fd: RawFd) {
    set(fd, 0);
}

/// Uncork `fd` once the current task yields (see the module doc). The fd is a plain number: if
/// its connection was closed (and the number reused) in between, the uncork lands on another
/// socket, where it is a harmless push (or an error, ignored, on something not TCP).
pub fn uncork_after_yield(fd: RawFd) {
    tokio::spawn(async move { uncork(fd) });
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

    #[test]
    fn corked_writes_wait_for_the_uncork_and_arrive_together() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        w.set_nodelay(true).unwrap();
        let (mut r, _) = l.accept().unwrap();
        assert!(cork(w.as_raw_fd()));
        w.write_all(b"head ").unwrap();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_deferred_uncork_runs_once_the_task_yields() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        w.set_nodelay(true).unwrap();
        let (mut r, _) = l.accept().unwrap();
        let fd = w.as_raw_fd();
        let got = tokio::spawn(async move {
            assert!(cork(fd));
            w.write_all(b"head ").unwrap();
            uncork_after_yield(fd);
            // Still this task's turn: the uncork has not run, so the body joins the held header.
            w.write_all(b"body").unwrap();
            r.set_nonblocking(true).unwrap();
            let held = r.peek(&mut [0u8; 16]);
            assert!(
                matches!(&held, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "{held:?}"
            );
            r.set_nonblocking(false).unwrap();
            tokio::task::yield_now().await;
            // Well within the kernel's own 200 ms cork limit: the uncork task did it.
            (readable(&mut r, Duration::from_millis(100)), w)
        })
        .await
        .unwrap()
        .0;
        assert_eq!(got, b"head body");
    }
}
