//! Server-sent events on the wire, sliced the ways real providers and TCP slice
//! them, so the gateway's stream parser meets every awkward boundary in tests:
//! one event per write (the common case), events cut into pieces mid-line
//! (`split`), many events per read (`coalesce`), CRLF line endings, comments.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::http::{encode_chunk, LAST_CHUNK};
use crate::knobs::Knobs;
use crate::now_ms;
use crate::record::Trace;

/// Pause between the pieces of a split event: long enough that each piece
/// arrives in its own read on the other side.
const SPLIT_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, Default)]
pub struct SseStyle {
    pub crlf: bool,
    pub comments: bool,
    pub split: bool,
    pub coalesce: bool,
    pub chunk_delay_ms: u64,
}

impl SseStyle {
    pub fn from_knobs(k: &Knobs) -> Self {
        SseStyle {
            crlf: k.crlf,
            comments: k.comments,
            split: k.split,
            coalesce: k.coalesce,
            chunk_delay_ms: k.chunk_delay_ms,
        }
    }
}

/// One event as bytes, plus where its `data:` line starts (after any comment).
#[derive(Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub data_at: usize,
    pub payload_len: usize,
}

pub fn frame(payload: &str, style: &SseStyle) -> Frame {
    let nl: &[u8] = if style.crlf { b"\r\n" } else { b"\n" };
    let mut bytes = Vec::with_capacity(payload.len() + 32);
    if style.comments {
        bytes.extend_from_slice(b": keep-alive");
        bytes.extend_from_slice(nl);
        bytes.extend_from_slice(nl);
    }
    let data_at = bytes.len();
    bytes.extend_from_slice(b"data: ");
    bytes.extend_from_slice(payload.as_bytes());
    bytes.extend_from_slice(nl);
    bytes.extend_from_slice(nl);
    Frame {
        bytes,
        data_at,
        payload_len: payload.len(),
    }
}

/// Where `split` cuts the `index`-th event: first inside the `data:` field name
/// (odd events) or in the middle of the JSON (even events; may land inside a
/// multi-byte character, which is the point), then before the very last byte, so
/// the blank line that ends the event arrives on its own (between `\n` and `\n`,
/// or between `\r` and `\n` with CRLF). Returns increasing offsets strictly
/// inside the frame.
pub fn split_points(frame: &Frame, index: usize) -> Vec<usize> {
    let len = frame.bytes.len();
    let first = if index % 2 == 1 {
        frame.data_at + 2 // "da|ta: "
    } else {
        frame.data_at + "data: ".len() + frame.payload_len / 2
    };
    let mut cuts = vec![first, len - 1];
    cuts.retain(|&c| c > 0 && c < len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Writes the response head and the events. Each event's send time is recorded
/// right before its first byte is handed to the socket.
///
/// `chunked` is false only for HTTP/1.0 clients, whose stream ends with the connection.
pub async fn write_stream<W: AsyncWrite + Unpin>(
    out: &mut W,
    head: Vec<u8>,
    events: &[String],
    style: &SseStyle,
    chunked: bool,
    trace: &Trace,
) -> io::Result<()> {
    if style.coalesce {
        // Head, every event and the last chunk in one write: the reader gets
        // several events (and maybe the end of the body) from a single read.
        let body: Vec<u8> = events.iter().flat_map(|e| frame(e, style).bytes).collect();
        let mut wire = head;
        encode_chunk(&mut wire, &body, chunked);
        if chunked {
            wire.extend_from_slice(LAST_CHUNK);
        }
        let at = now_ms();
        events.iter().for_each(|_| trace.event_sent(at));
        return out.write_all(&wire).await;
    }

    out.write_all(&head).await?;
    out.flush().await?;
    let mut wire = Vec::new();
    for (index, payload) in events.iter().enumerate() {
        // Split pieces pause between events too, so that no read on the other
        // side gets the tail of one event glued to the head of the next.
        let pause = match Duration::from_millis(style.chunk_delay_ms) {
            d if style.split => d.max(SPLIT_PAUSE),
            d => d,
        };
        if index > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let frame = frame(payload, style);
        let is_last = index + 1 == events.len();
        if style.split {
            let mut start = 0;
            for (n, end) in split_points(&frame, index)
                .into_iter()
                .chain([frame.bytes.len()])
                .enumerate()
            {
                if n > 0 {
                    tokio::time::sleep(SPLIT_PAUSE).await;
                } else {
                    trace.event_sent(now_ms());
                }
                wire.clear();
                encode_chunk(&mut wire, &frame.bytes[start..end], chunked);
                out.write_all(&wire).await?;
                out.flush().await?;
                start = end;
            }
            if is_last && chunked {
                out.write_all(LAST_CHUNK).await?;
            }
        } else {
            wire.clear();
            encode_chunk(&mut wire, &frame.bytes, chunked);
            // Ending the body with the last event saves a write and a packet.
            if is_last && chunked {
                wire.extend_from_slice(LAST_CHUNK);
            }
            trace.event_sent(now_ms());
            out.write_all(&wire).await?;
            // Each event on the wire before the next pause: a TLS stream may hold a write's tail
            // until flushed (a no-op on TCP).
            out.flush().await?;
        }
    }
    if events.is_empty() && chunked {
        out.write_all(LAST_CHUNK).await?;
    }
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Keeps every write separately, to check write boundaries.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn events() -> Vec<String> {
        vec![r#"{"a":1}"#.to_string(), "[DONE]".to_string()]
    }

    #[test]
    fn framing_variants() {
        let plain = SseStyle::default();
        assert_eq!(frame("x", &plain).bytes, b"data: x\n\n");
        let fancy = SseStyle {
            crlf: true,
            comments: true,
            ..plain
        };
        let f = frame("x", &fancy);
        assert_eq!(f.bytes, b": keep-alive\r\n\r\ndata: x\r\n\r\n");
        assert_eq!(f.data_at, 16);
    }

    #[test]
    fn split_points_are_awkward_and_in_bounds() {
        let style = SseStyle::default();
        let f = frame(r#"{"a":12}"#, &style); // data: {"a":12}\n\n
        assert_eq!(split_points(&f, 0), [10, 15]); // mid-JSON, between \n and \n
        assert_eq!(split_points(&f, 1), [2, 15]); // "da|ta:"
        let f = frame("", &style);
        assert_eq!(split_points(&f, 0), [6, 7]);
        let f = frame(
            "[DONE]",
            &SseStyle {
                crlf: true,
                ..style
            },
        );
        let cuts = split_points(&f, 3);
        assert_eq!(&f.bytes[cuts[1]..], b"\n"); // between \r and \n
    }

    #[tokio::test]
    async fn one_write_per_event_and_last_chunk_rides_along() {
        let mut out = Writes::default();
        write_stream(
            &mut out,
            b"HEAD".to_vec(),
            &events(),
            &SseStyle::default(),
            true,
            &Trace::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            out.0,
            [
                b"HEAD".to_vec(),
                b"f\r\ndata: {\"a\":1}\n\n\r\n".to_vec(),
                b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n".to_vec()
            ]
        );
    }

    #[tokio::test]
    async fn coalesce_is_a_single_write() {
        let mut out = Writes::default();
        let style = SseStyle {
            coalesce: true,
            split: true,
            ..SseStyle::default()
        };
        write_stream(
            &mut out,
            b"HEAD".to_vec(),
            &events(),
            &style,
            true,
            &Trace::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            out.0,
            [b"HEAD1d\r\ndata: {\"a\":1}\n\ndata: [DONE]\n\n\r\n0\r\n\r\n".to_vec()]
        );
    }

    #[tokio::test]
    async fn split_writes_each_piece_as_its_own_chunk() {
        let mut out = Writes::default();
        let style = SseStyle {
            split: true,
            ..SseStyle::default()
        };
        write_stream(
            &mut out,
            Vec::new(),
            &events(),
            &style,
            true,
            &Trace::default(),
        )
        .await
        .unwrap();
        let expected: [&[u8]; 7] = [
            b"9\r\ndata: {\"a\r\n",
            b"5\r\n\":1}\n\r\n",
            b"1\r\n\n\r\n",
            b"2\r\nda\r\n",
            b"b\r\nta: [DONE]\n\r\n",
            b"1\r\n\n\r\n",
            b"0\r\n\r\n",
        ];
        assert_eq!(
            out.0.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            expected
        );
    }

    #[tokio::test]
    async fn http10_streams_are_raw() {
        let mut out = Writes::default();
        write_stream(
            &mut out,
            Vec::new(),
            &events(),
            &SseStyle::default(),
            false,
            &Trace::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            out.0,
            [
                b"data: {\"a\":1}\n\n".to_vec(),
                b"data: [DONE]\n\n".to_vec()
            ]
        );
    }
}
