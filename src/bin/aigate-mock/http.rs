//! Just enough HTTP/1.x, server side, to stand in for a provider behind a proxy:
//! keep-alive and pipelining, HTTP/1.0 close semantics, Content-Length and
//! chunked request bodies, `Expect: 100-continue`.
//!
//! Hand-rolled on top of httparse rather than a full server framework because the
//! SSE tests need to decide exactly which bytes go out in which write.

use std::io::{self, Write as _};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request body accepted (the gateway's tests send 1 MiB; leave headroom).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// How many bytes to buffer while waiting for the end of a request head (or of
/// chunked trailers) before giving up with 431. The gateway forwards heads up to its
/// `max_header_size` (at most 512 KiB), so the mock takes as much as Pingora does (1 MiB):
/// a lower cap made the answer depend on how the kernel split the reads.
const MAX_HEAD: usize = 1024 * 1024;
const MAX_HEADERS: usize = 256;
/// How much buffer to make room for before each socket read.
const READ_RESERVE: usize = 64 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Terminates a chunked response body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A fully read request. Header names are lower-cased, values decoded lossily
/// (they are only ever compared with ASCII or shown back to tests).
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path plus query.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes unless told `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let has = |token: &str| {
            self.headers
                .iter()
                .filter(|(n, _)| n == "connection")
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if self.minor_version == 0 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Headers as tests see them: repeated names joined with ", ", first-seen order.
pub fn joined_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}

/// Why no request came out of the connection.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed cleanly between requests.
    Closed,
    /// The socket failed or closed mid-request: nobody to answer.
    Broken,
    /// The request is unacceptable: answer this status, then close (the framing
    /// of whatever follows is unknown).
    Reject(u16, String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Broken
    }
}

impl From<(u16, String)> for ReadError {
    fn from((status, msg): (u16, String)) -> Self {
        ReadError::Reject(status, msg)
    }
}

/// Request line and headers, before the body.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
}

/// Parses a request head from the start of `buf`; `Ok(None)` means more bytes are needed.
/// Returns the head and the number of bytes it took.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, (u16, String)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or("/").to_string(),
                minor_version: req.version.unwrap_or(1),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Err(httparse::Error::TooManyHeaders) => Err((431, "too many request headers".into())),
        Err(e) => Err((400, format!("malformed request head: {e}"))),
    }
}

/// How the request body is delimited.
#[derive(Debug, PartialEq, Eq)]
pub enum ReqFraming {
    Empty,
    Length(usize),
    Chunked,
}

pub fn request_framing(headers: &[(String, String)]) -> Result<ReqFraming, (u16, String)> {
    // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
    let codings: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(last) = codings.last() {
        return if last.eq_ignore_ascii_case("chunked") && codings.len() == 1 {
            Ok(ReqFraming::Chunked)
        } else {
            Err((
                501,
                format!("unsupported transfer-encoding: {}", codings.join(", ")),
            ))
        };
    }
    let mut length = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        let n: usize = value
            .trim()
            .parse()
            .map_err(|_| (400, format!("invalid content-length: {value:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err((400, "conflicting content-length headers".into()));
        }
        length = Some(n);
    }
    match length {
        None | Some(0) => Ok(ReqFraming::Empty),
        Some(n) if n > MAX_BODY => {
            Err((413, format!("request body of {n} bytes exceeds {MAX_BODY}")))
        }
        Some(n) => Ok(ReqFraming::Length(n)),
    }
}

/// Incremental decoder for a chunked request body: fed whatever has arrived,
/// consumes what it can, so a 64 MiB body is scanned once, not once per read.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            body: Vec::new(),
        }
    }

    /// Consumes bytes from the front of `buf`; `Ok(true)` once the whole body is in.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<bool, (u16, String)> {
        loop {
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        let size = usize::try_from(size).unwrap_or(usize::MAX);
                        if size == 0 {
                            self.state = ChunkState::Trailers;
                        } else if size > MAX_BODY - self.body.len() {
                            return Err((
                                413,
                                format!("chunked request body exceeds {MAX_BODY} bytes"),
                            ));
                        } else {
                            self.body.reserve(size);
                            self.state = ChunkState::Data(size);
                        }
                    }
                    Ok(httparse::Status::Partial) if buf.len() < 1024 => return Ok(false),
                    _ => return Err((400, "invalid chunk size line".into())),
                },
                ChunkState::Data(remaining) => {
                    let take = remaining.min(buf.len());
                    if take == 0 {
                        return Ok(false);
                    }
                    self.body.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    self.state = if take == remaining {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining - take)
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err((400, "chunk data not followed by CRLF".into()));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            buf.advance(used);
                            self.state = ChunkState::Done;
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(false),
                        _ => return Err((400, "invalid chunked trailer".into())),
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }

    pub fn into_body(self) -> Bytes {
        Bytes::from(self.body)
    }
}

/// Reads more bytes into `buf`; 0 means the peer closed.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_RESERVE);
    }
    stream.read_buf(buf).await
}

/// Reads one request. `buf` carries bytes over between requests of a keep-alive
/// connection, which is what makes pipelining work.
pub async fn read_request<S>(stream: &mut S, buf: &mut BytesMut) -> Result<Request, ReadError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (head, used) = loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse_head(buf)? {
                break parsed;
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reject(431, "request head too large".into()));
        }
        if fill(stream, buf).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Broken
            });
        }
    };
    buf.advance(used);

    let framing = request_framing(&head.headers)?;
    // Only prompt for the body when none of it has been sent yet: a client that
    // did not wait must not see a stray 100 in front of the real answer's bytes.
    let wants_continue = head.minor_version == 1
        && header(&head.headers, "expect")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
        && framing != ReqFraming::Empty
        && buf.is_empty();
    if wants_continue {
        stream.write_all(CONTINUE).await?;
    }

    let body = match framing {
        ReqFraming::Empty => Bytes::new(),
        ReqFraming::Length(len) => {
            if buf.len() < len {
                buf.reserve(len - buf.len());
            }
            while buf.len() < len {
                if fill(stream, buf).await? == 0 {
                    return Err(ReadError::Broken);
                }
            }
            // Copy rather than split the buffer off: a recorded body would otherwise
            // pin the connection's whole read buffer for as long as it is kept.
            let body = Bytes::copy_from_slice(&buf[..len]);
            buf.advance(len);
            body
        }
        ReqFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            while !decoder.feed(buf)? {
                if fill(stream, buf).await? == 0 {
                    return Err(ReadError::Broken);
                }
            }
            decoder.into_body()
        }
    };

    Ok(Request {
        method: head.method,
        target: head.target,
        minor_version: head.minor_version,
        headers: head.headers,
        body,
    })
}

/// Per-request facts that shape every response head.
#[derive(Debug, Clone, Copy)]
pub struct Wire<'a> {
    pub name: &'a str,
    pub keep_alive: bool,
    pub http10: bool,
    pub head_only: bool,
}

impl<'a> Wire<'a> {
    pub fn for_request(req: &Request, name: &'a str) -> Self {
        Wire {
            name,
            keep_alive: req.keep_alive(),
            http10: req.minor_version == 0,
            head_only: req.method == "HEAD",
        }
    }

    /// For answers sent before or without a parsed request.
    pub fn closing(name: &'a str) -> Self {
        Wire {
            name,
            keep_alive: false,
            http10: false,
            head_only: false,
        }
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy)]
pub enum RespFraming {
    Length(usize),
    Chunked,
    /// HTTP/1.0 has no chunked encoding: a stream ends when the connection does.
    UntilClose,
    /// 204/205/304 carry neither a body nor a length.
    Bodiless,
}

/// Statuses that never carry a body.
pub fn bodiless(status: u16) -> bool {
    matches!(status, 100..=199 | 204 | 205 | 304)
}

pub fn write_head(
    out: &mut Vec<u8>,
    wire: &Wire,
    status: u16,
    framing: RespFraming,
    headers: &[(&str, &str)],
) {
    // Writes into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason(status));
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "x-mock-name: {}\r\n", wire.name);
    match framing {
        RespFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RespFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RespFraming::UntilClose | RespFraming::Bodiless => {}
    }
    if !wire.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if wire.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one HTTP chunk (or raw, for a close-delimited body).
/// Empty data is skipped: an empty chunk would end the body.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Mock Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn head_parsing_lowercases_names_and_keeps_target() {
        let raw =
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nX-Mock-Chunks: 5\r\n\r\nBODY";
        let (head, used) = parse_head(raw).unwrap().unwrap();
        assert_eq!(used, raw.len() - 4);
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/v1/chat/completions?x=1");
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.headers, hdrs(&[("host", "a"), ("x-mock-chunks", "5")]));
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost:").unwrap().is_none());
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
                .unwrap_err()
                .0,
            400
        );
    }

    #[test]
    fn framing_rules() {
        assert_eq!(request_framing(&hdrs(&[])).unwrap(), ReqFraming::Empty);
        assert_eq!(
            request_framing(&hdrs(&[("content-length", "12")])).unwrap(),
            ReqFraming::Length(12)
        );
        assert_eq!(
            request_framing(&hdrs(&[
                ("content-length", "12"),
                ("transfer-encoding", "chunked")
            ]))
            .unwrap(),
            ReqFraming::Chunked
        );
        assert_eq!(
            request_framing(&hdrs(&[("content-length", "x")]))
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            request_framing(&hdrs(&[("content-length", "1"), ("content-length", "2")]))
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            request_framing(&hdrs(&[("content-length", "999999999999")]))
                .unwrap_err()
                .0,
            413
        );
        assert_eq!(
            request_framing(&hdrs(&[("transfer-encoding", "gzip")]))
                .unwrap_err()
                .0,
            501
        );
    }

    #[test]
    fn chunked_decoding_byte_by_byte() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut done_at = None;
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            if decoder.feed(&mut buf).unwrap() {
                done_at = Some(i);
                break;
            }
        }
        assert_eq!(done_at, Some(wire.len() - 5));
        assert_eq!(&decoder.into_body()[..], b"hello world");
    }

    #[test]
    fn chunked_decoding_rejects_garbage() {
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert_eq!(ChunkedDecoder::new().feed(&mut buf).unwrap_err().0, 400);
        let mut buf = BytesMut::from(&b"3\r\nabcXX"[..]);
        assert_eq!(ChunkedDecoder::new().feed(&mut buf).unwrap_err().0, 400);
    }

    #[test]
    fn keep_alive_semantics() {
        let req = |minor, conn: Option<&str>| Request {
            method: "GET".into(),
            target: "/".into(),
            minor_version: minor,
            headers: conn.map(|c| hdrs(&[("connection", c)])).unwrap_or_default(),
            body: Bytes::new(),
        };
        assert!(req(1, None).keep_alive());
        assert!(!req(1, Some("Close")).keep_alive());
        assert!(!req(0, None).keep_alive());
        assert!(req(0, Some("Keep-Alive")).keep_alive());
    }

    #[test]
    fn repeated_headers_are_joined() {
        let joined = joined_headers(&hdrs(&[("a", "1"), ("b", "2"), ("a", "3")]));
        assert_eq!(joined, hdrs(&[("a", "1, 3"), ("b", "2")]));
    }

    #[tokio::test]
    async fn reads_pipelined_requests_and_answers_100_continue() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client
            .write_all(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b?q HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let first = read_request(&mut server, &mut buf).await.unwrap();
        assert_eq!(
            (first.method.as_str(), first.path(), &first.body[..]),
            ("POST", "/a", &b"abc"[..])
        );
        let second = read_request(&mut server, &mut buf).await.unwrap();
        assert_eq!((second.path(), second.query()), ("/b", "q"));

        client
            .write_all(
                b"PUT /c HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        let reader = tokio::spawn(async move {
            let req = read_request(&mut server, &mut buf).await.unwrap();
            (req.body, server)
        });
        let mut interim = [0u8; CONTINUE.len()];
        client.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, CONTINUE);
        client.write_all(b"2\r\nhi\r\n0\r\n\r\n").await.unwrap();
        let (body, mut server) = reader.await.unwrap();
        assert_eq!(&body[..], b"hi");

        drop(client);
        assert!(matches!(
            read_request(&mut server, &mut BytesMut::new()).await,
            Err(ReadError::Closed)
        ));
    }
}
