//! Throughput of the response taps that run on every proxied byte:
//! * `SseTap` over a realistic 300-event OpenAI chat stream, fed one chunk per event and in
//!   arbitrary 1 KiB chunks, in pass mode (forward as is) and hold mode (drop the usage-only
//!   event the gateway asked for itself);
//! * `JsonTap` over a typical 282-byte chat completion in one chunk (the common case: per
//!   request costs, not throughput), a 2 KB chat completion and a ~200 KB embeddings response in
//!   16 KiB chunks.
//!
//! Run: `cargo bench --bench sse_usage` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::time::Duration;

use aigate::llm::json_tap::JsonTap;
use aigate::llm::sse::{SseTap, SseTapOptions};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const MODEL: &str = "gpt-4o-mini-2024-07-18";
const EVENTS: usize = 300;

/// Deterministic filler text so runs are comparable.
fn content(i: usize) -> String {
    const WORDS: [&str; 12] = [
        "the",
        "gateway",
        "streams",
        "tokens",
        "quickly,",
        "while",
        "counting",
        "usage",
        "for",
        "quota",
        "\\\"checks\\\"",
        "caf\\u00e9",
    ];
    let mut s = String::new();
    let mut k = i * 7;
    while s.len() < 40 {
        s.push_str(WORDS[k % WORDS.len()]);
        s.push(' ');
        k += 5;
    }
    s
}

/// A 300-event chat stream as OpenAI sends it with `stream_options.include_usage`: a role
/// chunk, content chunks (~40 bytes of content each), a finish chunk, the usage-only chunk and
/// `[DONE]`. Returns one string per event.
fn chat_stream_events() -> Vec<String> {
    let head = |i: usize| {
        format!(
            "data: {{\"id\":\"chatcmpl-AhKpYwRr0Q8ZrWq3Vx1sT{i:04}\",\"object\":\"chat.completion.chunk\",\
             \"created\":1735689600,\"model\":\"{MODEL}\",\"system_fingerprint\":\"fp_d02d531b47\","
        )
    };
    let mut v = Vec::with_capacity(EVENTS);
    v.push(format!(
        "{}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\
         \"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n",
        head(0)
    ));
    for i in 1..EVENTS - 3 {
        v.push(format!(
            "{}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"logprobs\":null,\
             \"finish_reason\":null}}],\"usage\":null}}\n\n",
            head(i),
            content(i)
        ));
    }
    v.push(format!(
        "{}\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n",
        head(EVENTS - 3)
    ));
    v.push(format!(
        "{}\"choices\":[],\"usage\":{{\"prompt_tokens\":1024,\"completion_tokens\":296,\"total_tokens\":1320,\
         \"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\
         \"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\
         \"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}}}\n\n",
        head(EVENTS - 2)
    ));
    v.push("data: [DONE]\n\n".to_owned());
    assert_eq!(v.len(), EVENTS);
    v
}

/// A short chat completion as a mock or a terse model answers: 282 bytes, compact, one chunk.
const SMALL_CHAT: &str = r#"{"id":"chatcmpl-mock-6601","object":"chat.completion","created":1795702559,"model":"x","system_fingerprint":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from m"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}"#;

fn chat_completion() -> Vec<u8> {
    let text: String = (0..30).map(content).collect();
    format!(
        r#"{{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "{MODEL}",
  "choices": [
    {{
      "index": 0,
      "message": {{
        "role": "assistant",
        "content": "{text}",
        "refusal": null,
        "annotations": []
      }},
      "logprobs": null,
      "finish_reason": "stop"
    }}
  ],
  "usage": {{
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {{"cached_tokens": 0, "audio_tokens": 0}},
    "completion_tokens_details": {{"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
  }},
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}}"#
    )
    .into_bytes()
}

/// OpenAI embeddings response layout (pretty-printed as the API returns it): 6 x 1536 floats,
/// about 200 KB.
fn embeddings() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut s = String::from("{\n  \"object\": \"list\",\n  \"data\": [\n");
    let n = 6;
    for v in 0..n {
        s += &format!("    {{\n      \"object\": \"embedding\",\n      \"index\": {v},\n      \"embedding\": [\n");
        for d in 0..1536 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = (x % 2_000_000) as f64 / 1e8 - 0.01;
            s += &format!("        {f:.10}{}\n", if d < 1535 { "," } else { "" });
        }
        s += &format!("      ]\n    }}{}\n", if v + 1 < n { "," } else { "" });
    }
    s += "  ],\n  \"model\": \"text-embedding-3-small\",\n  \"usage\": {\n    \"prompt_tokens\": 48,\n    \"total_tokens\": 48\n  }\n}\n";
    s.into_bytes()
}

fn bench_sse(c: &mut Criterion) {
    let events = chat_stream_events();
    let stream: Vec<u8> = events.concat().into_bytes();
    let per_event: Vec<Bytes> = events.iter().map(|e| Bytes::from(e.clone())).collect();
    let per_kib: Vec<Bytes> = stream.chunks(1024).map(Bytes::copy_from_slice).collect();

    let mut g = c.benchmark_group("sse_tap");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    let modes = [
        (
            "pass",
            SseTapOptions {
                drop_usage_only_event: false,
                capture_text: false,
            },
        ),
        (
            "hold",
            SseTapOptions {
                drop_usage_only_event: true,
                capture_text: false,
            },
        ),
        (
            "hold+text",
            SseTapOptions {
                drop_usage_only_event: true,
                capture_text: true,
            },
        ),
    ];
    for (chunking, chunks) in [("per_event", &per_event), ("1KiB", &per_kib)] {
        for (mode, opts) in modes {
            g.bench_with_input(BenchmarkId::new(mode, chunking), chunks, |b, chunks| {
                b.iter(|| {
                    let mut tap = SseTap::new(opts);
                    let mut forwarded = 0;
                    for chunk in chunks.iter() {
                        forwarded += tap.on_chunk(chunk.clone()).len();
                    }
                    forwarded += tap.finish().len();
                    assert!(tap.usage().is_some() && tap.saw_done());
                    black_box((
                        forwarded,
                        tap.usage(),
                        tap.model().map(str::len),
                        tap.text().len(),
                    ))
                })
            });
        }
    }
    g.finish();
}

fn bench_json(c: &mut Criterion) {
    let mut g = c.benchmark_group("json_tap");
    let small = SMALL_CHAT.as_bytes();
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_with_input(
        BenchmarkId::new("one_chunk", "chat_completion_282B"),
        small,
        |b, body| {
            b.iter(|| {
                let mut tap = JsonTap::new();
                tap.feed(black_box(body));
                assert!(tap.usage().is_some() && tap.model().is_some());
                black_box((tap.usage(), tap.model().map(str::len)))
            })
        },
    );
    for (name, body) in [
        ("chat_completion_2KB", chat_completion()),
        ("embeddings_200KB", embeddings()),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("16KiB_chunks", name), &body, |b, body| {
            b.iter(|| {
                let mut tap = JsonTap::new();
                for chunk in body.chunks(16 << 10) {
                    tap.feed(black_box(chunk));
                }
                assert!(tap.usage().is_some() && tap.model().is_some());
                black_box((tap.usage(), tap.model().map(str::len)))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_sse, bench_json
}
criterion_main!(benches);
