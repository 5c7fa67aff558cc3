//! The request log behind `GET /_mock/requests`.
//!
//! A record is created as soon as a request has been read, so a test sees what
//! the gateway sent even when the answer never comes (hang, close), and it is
//! filled in while the answer is written: the status when the head goes out, and
//! the time of each SSE event's first write. Tests compare those timestamps with
//! what their client saw to prove the gateway does not buffer streams.
//!
//! Locks here are plain std mutexes held for a push or a copy, never across an await.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::http::{joined_headers, Request};

pub const MAX_RECORDS: usize = 1000;
/// Bodies can be 64 MiB each: cap what the log keeps alive so a large-body test
/// cannot exhaust memory (the oldest records go first).
pub const MAX_RECORDED_BODY_BYTES: usize = 256 * 1024 * 1024;

/// No lock here is held while user code could panic, so a poisoned lock still
/// holds consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Record {
    seq: u64,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    received_at_ms: u64,
    /// Which connection the request came on (numbered from 1 as they are accepted), and its
    /// place on that connection (1 = the first request): tests see connection reuse with it.
    conn: u64,
    conn_request: u64,
    /// How many TCP segments with data carried the request (Linux; `None` elsewhere): tests see
    /// whether a header and its body came in one.
    segments: Option<u32>,
    /// 0 until a status has been written.
    status: AtomicU16,
    events_sent_at_ms: Mutex<Vec<u64>>,
}

/// Serialises a header list as a JSON object in first-seen order.
struct HeaderObject<'a>(&'a [(String, String)]);

impl Serialize for HeaderObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

pub fn header_object(headers: &[(String, String)]) -> impl Serialize + '_ {
    HeaderObject(headers)
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let status = match self.status.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        };
        let events = lock(&self.events_sent_at_ms).clone();
        let mut s = serializer.serialize_struct("Record", 12)?;
        s.serialize_field("seq", &self.seq)?;
        s.serialize_field("method", &self.method)?;
        s.serialize_field("path", &self.target)?;
        s.serialize_field("headers", &HeaderObject(&self.headers))?;
        s.serialize_field("body", &String::from_utf8_lossy(&self.body))?;
        s.serialize_field("body_len", &self.body.len())?;
        s.serialize_field("received_at_ms", &self.received_at_ms)?;
        s.serialize_field("conn", &self.conn)?;
        s.serialize_field("conn_request", &self.conn_request)?;
        s.serialize_field("segments", &self.segments)?;
        s.serialize_field("status", &status)?;
        s.serialize_field("events_sent_at_ms", &events)?;
        s.end()
    }
}

#[derive(Default)]
struct Log {
    last_seq: u64,
    records: VecDeque<Arc<Record>>,
    body_bytes: usize,
}

#[derive(Default)]
pub struct Recorder {
    log: Mutex<Log>,
}

impl Recorder {
    /// `conn`: (connection number, place of the request on it); `segments`: the TCP segments with
    /// data that carried it, when known.
    pub fn record(
        &self,
        req: &Request,
        received_at_ms: u64,
        conn: (u64, u64),
        segments: Option<u32>,
    ) -> Arc<Record> {
        // Copy everything before taking the lock; only the seq is assigned under it.
        let mut record = Record {
            seq: 0,
            method: req.method.clone(),
            target: req.target.clone(),
            headers: joined_headers(&req.headers),
            body: req.body.clone(),
            received_at_ms,
            conn: conn.0,
            conn_request: conn.1,
            segments,
            status: AtomicU16::new(0),
            events_sent_at_ms: Mutex::new(Vec::new()),
        };
        let mut log = lock(&self.log);
        log.last_seq += 1;
        record.seq = log.last_seq;
        let record = Arc::new(record);
        log.body_bytes += record.body.len();
        log.records.push_back(record.clone());
        while log.records.len() > MAX_RECORDS
            || (log.body_bytes > MAX_RECORDED_BODY_BYTES && log.records.len() > 1)
        {
            if let Some(old) = log.records.pop_front() {
                log.body_bytes -= old.body.len();
            }
        }
        record
    }

    /// The log as a JSON array, oldest first. Serialised outside the log lock so a
    /// big dump does not stall requests being recorded meanwhile.
    pub fn to_json(&self) -> Vec<u8> {
        let snapshot: Vec<Arc<Record>> = lock(&self.log).records.iter().cloned().collect();
        let records: Vec<&Record> = snapshot.iter().map(Arc::as_ref).collect();
        serde_json::to_vec(&records).unwrap_or_else(|_| b"[]".to_vec())
    }

    /// Empties the log (sequence numbers keep counting); returns how many were dropped.
    pub fn clear(&self) -> usize {
        let mut log = lock(&self.log);
        log.body_bytes = 0;
        std::mem::take(&mut log.records).len()
    }
}

/// The handle the answer-writing code fills in; does nothing when recording is
/// off or the request is not recorded (control API).
#[derive(Default)]
pub struct Trace(Option<Arc<Record>>);

impl Trace {
    pub fn new(record: Option<Arc<Record>>) -> Self {
        Trace(record)
    }

    pub fn status(&self, status: u16) {
        if let Some(r) = &self.0 {
            r.status.store(status, Ordering::Relaxed);
        }
    }

    pub fn event_sent(&self, at_ms: u64) {
        if let Some(r) = &self.0 {
            lock(&r.events_sent_at_ms).push(at_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn request(body: &'static [u8]) -> Request {
        Request {
            method: "POST".into(),
            target: "/v1/embeddings?a=1".into(),
            minor_version: 1,
            headers: vec![
                ("x-a".into(), "1".into()),
                ("x-a".into(), "2".into()),
                ("host".into(), "h".into()),
            ],
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn records_serialise_with_status_and_events() {
        let recorder = Recorder::default();
        let trace = Trace::new(Some(recorder.record(
            &request(b"{\"x\":1}"),
            1000,
            (4, 2),
            Some(1),
        )));
        recorder.record(&request(b"\xff"), 1001, (5, 1), None);
        trace.status(200);
        trace.event_sent(1002);
        trace.event_sent(1003);
        let log: Value = serde_json::from_slice(&recorder.to_json()).unwrap();
        assert_eq!(
            log[0],
            json!({"seq": 1, "method": "POST", "path": "/v1/embeddings?a=1",
                   "headers": {"x-a": "1, 2", "host": "h"}, "body": "{\"x\":1}", "body_len": 7,
                   "received_at_ms": 1000, "conn": 4, "conn_request": 2, "segments": 1, "status": 200, "events_sent_at_ms": [1002, 1003]})
        );
        assert_eq!(log[1]["status"], Value::Null);
        assert_eq!(log[1]["segments"], Value::Null);
        assert_eq!(log[1]["body"], "\u{fffd}");
        assert_eq!(recorder.clear(), 2);
        assert_eq!(recorder.to_json(), b"[]");
        assert_eq!(recorder.record(&request(b""), 0, (1, 1), None).seq, 3);
    }

    #[test]
    fn keeps_only_the_last_records() {
        let recorder = Recorder::default();
        for _ in 0..MAX_RECORDS + 5 {
            recorder.record(&request(b""), 0, (1, 1), None);
        }
        let log: Value = serde_json::from_slice(&recorder.to_json()).unwrap();
        assert_eq!(log.as_array().unwrap().len(), MAX_RECORDS);
        assert_eq!(log[0]["seq"], 6);
    }
}
