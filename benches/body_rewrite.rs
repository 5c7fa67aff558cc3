//! The request-body hot path: parse the client's JSON once and rewrite it for the provider
//! (options spliced in, stream_options added), for a short chat, a long conversation (~256 KiB)
//! and a 1 MiB body.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use aigate::llm::request::{BodyOptions, LlmRequest, RewriteSpec};

fn chat_body(turns: usize, words_per_turn: usize, stream: bool) -> Bytes {
    let mut messages = Vec::new();
    messages.push(serde_json::json!({"role": "system", "content": "You are a helpful assistant."}));
    for i in 0..turns {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let text = "lorem ipsum dolor sit amet ".repeat(words_per_turn / 5 + 1);
        messages.push(serde_json::json!({"role": role, "content": text}));
    }
    let v = serde_json::json!({"model": "gpt-4o-mini", "messages": messages, "temperature": 0.3, "stream": stream});
    Bytes::from(v.to_string())
}

fn bench(c: &mut Criterion) {
    let options = BodyOptions::from_map(
        serde_json::json!({"model": "gpt-4o", "max_tokens": 512, "temperature": 1.0})
            .as_object()
            .unwrap(),
    );
    let cases = [
        ("short_chat", chat_body(2, 20, false)),
        ("long_conversation_stream", chat_body(200, 240, true)),
        ("one_mib", chat_body(40, 4800, false)),
    ];
    let mut g = c.benchmark_group("body_rewrite");
    for (name, body) in cases {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{name}_{}KiB", body.len() / 1024), |b| {
            b.iter(|| {
                let req = LlmRequest::parse(body.clone()).unwrap();
                let out = req.rewrite(&options, RewriteSpec::default());
                criterion::black_box(out.body.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
