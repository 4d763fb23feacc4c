//! Decoder throughput: parses and serialises one million synthetic insert
//! messages of a five-column table, and prints messages per second.
//!
//! `cargo run --release --example decode_throughput`

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use walhook::decode::{Decoder, SourceEvent};

fn main() {
    const N: usize = 1_000_000;
    let mut rel = BytesMut::new();
    rel.put_u8(b'R');
    rel.put_u32(16384);
    rel.put_slice(b"public\0orders\0");
    rel.put_u8(b'd');
    let cols: [(&str, u32); 5] = [
        ("id", 20),
        ("amount", 1700),
        ("status", 25),
        ("created", 1184),
        ("payload", 3802),
    ];
    rel.put_i16(cols.len() as i16);
    for (i, (name, oid)) in cols.iter().enumerate() {
        rel.put_u8(u8::from(i == 0));
        rel.put_slice(name.as_bytes());
        rel.put_u8(0);
        rel.put_u32(*oid);
        rel.put_i32(-1);
    }
    let messages: Vec<Bytes> = (0..N)
        .map(|i| {
            let id = i.to_string();
            let values = [
                id.as_str(),
                "150.50",
                "open \"quoted\"",
                "2026-11-22 07:04:00.123456+00",
                r#"{"sku": "A-1", "qty": 3}"#,
            ];
            let mut m = BytesMut::new();
            m.put_u8(b'I');
            m.put_u32(16384);
            m.put_u8(b'N');
            m.put_i16(values.len() as i16);
            for v in values {
                m.put_u8(b't');
                m.put_i32(v.len() as i32);
                m.put_slice(v.as_bytes());
            }
            m.freeze()
        })
        .collect();
    let input_bytes: usize = messages.iter().map(Bytes::len).sum();
    let mut begin = BytesMut::new();
    begin.put_u8(b'B');
    begin.put_u64(0x1000);
    begin.put_i64(0);
    begin.put_u32(1);

    let mut decoder = Decoder::new();
    let mut out = Vec::with_capacity(1);
    decoder.decode(rel.freeze(), &mut out).expect("relation");
    decoder.decode(begin.freeze(), &mut out).expect("begin");

    let start = Instant::now();
    let mut json = Vec::with_capacity(512);
    let mut json_bytes = 0;
    for m in messages {
        out.clear();
        decoder.decode(m, &mut out).expect("insert");
        for e in &out {
            if let SourceEvent::Record(r) = e {
                json.clear();
                r.write_json(&mut json);
                json_bytes += json.len();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{N} inserts in {secs:.3} s: {:.0} messages/s, {:.0} MB/s of pgoutput in, {:.0} MB/s of JSON out",
        N as f64 / secs,
        input_bytes as f64 / secs / 1e6,
        json_bytes as f64 / secs / 1e6
    );
}
