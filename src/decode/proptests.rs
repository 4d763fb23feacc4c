//! The decoder never panics, whatever the bytes: random input, and real
//! pgoutput messages (tests/fixtures) truncated, bit-flipped, overwritten and
//! spliced, fed to a Decoder that has replayed the real stream up to that
//! point and then keeps going. Whatever records come out must serialise to
//! valid JSON.

use std::sync::OnceLock;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;

use super::convert::write_text_json;
use super::pgoutput::tests::fixture;
use super::pgoutput::{parse, LogicalMessage};
use super::{Decoder, SourceEvent, TypeKind};

/// Real messages with whether each was sent inside a stream segment.
fn real(file: usize) -> &'static [(Bytes, bool)] {
    static FILES: OnceLock<[Vec<(Bytes, bool)>; 2]> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        let mark = |msgs: Vec<Bytes>| {
            let mut in_stream = false;
            msgs.into_iter()
                .map(|m| {
                    let flag = in_stream;
                    match parse(&m, in_stream) {
                        Ok(LogicalMessage::StreamStart(_)) => in_stream = true,
                        Ok(LogicalMessage::StreamStop) => in_stream = false,
                        _ => {}
                    }
                    (m, flag)
                })
                .collect()
        };
        [
            mark(fixture(include_str!(
                "../../tests/fixtures/pgoutput_v1.hex"
            ))),
            mark(fixture(include_str!(
                "../../tests/fixtures/pgoutput_v2_stream.hex"
            ))),
        ]
    });
    &files[file]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    FlipBits(Vec<(Index, u8)>),
    Overwrite(Index, Vec<u8>),
    Insert(Index, Vec<u8>),
    Splice {
        other: Index,
        keep: Index,
        from: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec((any::<Index>(), 0u8..8), 1..8).prop_map(Mutation::FlipBits),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(other, keep, from)| Mutation::Splice { other, keep, from }),
    ]
}

fn apply(m: &Mutation, msg: &[u8], all: &[(Bytes, bool)]) -> Bytes {
    let mut v = msg.to_vec();
    let len = v.len().max(1);
    match m {
        Mutation::Truncate(i) => v.truncate(i.index(len)),
        Mutation::FlipBits(flips) => {
            for (i, bit) in flips {
                if !v.is_empty() {
                    let at = i.index(v.len());
                    v[at] ^= 1 << bit;
                }
            }
        }
        Mutation::Overwrite(i, bytes) => {
            let at = i.index(len);
            for (k, b) in bytes.iter().enumerate() {
                if let Some(slot) = v.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
        Mutation::Insert(i, bytes) => {
            let at = i.index(v.len() + 1);
            v.splice(at..at, bytes.iter().copied());
        }
        Mutation::Splice { other, keep, from } => {
            let other = &all[other.index(all.len())].0;
            v.truncate(keep.index(len));
            v.extend_from_slice(&other[from.index(other.len().max(1)).min(other.len())..]);
        }
    }
    Bytes::from(v)
}

/// Feeds one message; any record produced must serialise to valid JSON.
fn feed(decoder: &mut Decoder, msg: Bytes, out: &mut Vec<SourceEvent>) {
    out.clear();
    let _ = decoder.decode(msg, out);
    let mut buf = Vec::new();
    for e in out.iter() {
        if let SourceEvent::Record(r) = e {
            buf.clear();
            r.write_json(&mut buf);
            if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&buf) {
                panic!("invalid JSON ({err}): {}", String::from_utf8_lossy(&buf));
            }
        }
    }
}

const TAGS: &[u8] = b"BCORYIUDTMSEcAbPKrpxZ";

fn kinds() -> impl Strategy<Value = TypeKind> {
    let scalar = prop_oneof![
        Just(TypeKind::Bool),
        Just(TypeKind::Int),
        Just(TypeKind::Float),
        Just(TypeKind::Numeric),
        Just(TypeKind::Json),
        Just(TypeKind::Bytea),
        Just(TypeKind::Timestamp),
        Just(TypeKind::Timestamptz),
        Just(TypeKind::Text),
    ];
    scalar.prop_recursive(2, 4, 1, |inner| {
        inner.prop_map(|k| TypeKind::Array(Box::new(k)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(tag in prop::sample::select(TAGS), body in prop::collection::vec(any::<u8>(), 0..120), in_stream: bool) {
        let mut data = vec![tag];
        data.extend_from_slice(&body);
        let data = Bytes::from(data);
        let _ = parse(&data, in_stream);
        let mut out = Vec::new();
        feed(&mut Decoder::new(), data.clone(), &mut out);
        // Also into a decoder that knows the real relations and has a transaction open.
        let mut primed = Decoder::new();
        for (m, _) in real(0).iter().take(7) {
            feed(&mut primed, m.clone(), &mut out);
        }
        feed(&mut primed, data, &mut out);
    }

    #[test]
    fn mutated_real_messages_never_panic(file in 0usize..2, at: Index, m in mutation(), then in 0usize..40) {
        let all = real(file);
        let at = at.index(all.len());
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for (msg, _) in &all[..at] {
            feed(&mut decoder, msg.clone(), &mut out);
        }
        let (original, in_stream) = &all[at];
        let mutated = apply(&m, original, all);
        let _ = parse(&mutated, *in_stream);
        let _ = parse(&mutated, !*in_stream);
        feed(&mut decoder, mutated, &mut out);
        // The decoder must survive what follows, too.
        for (msg, _) in all.iter().skip(at + 1).take(then) {
            feed(&mut decoder, msg.clone(), &mut out);
        }
    }

    #[test]
    fn any_text_converts_to_valid_json(kind in kinds(), text in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..60),
        "[-{}\\[\\]\"\\\\, :=.0-9a-fNULxtZ+]{0,40}".prop_map(String::into_bytes),
    ]) {
        let mut out = Vec::new();
        write_text_json(&kind, &text, &mut out);
        if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&out) {
            panic!("{kind:?} {:?} gave invalid JSON ({err}): {}", String::from_utf8_lossy(&text), String::from_utf8_lossy(&out));
        }
    }
}
