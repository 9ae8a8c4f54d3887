//! How the embedded store keeps bodies: compressed when that pays, as text otherwise.
//!
//! Why: at durable-ack rates the SQLite store is bound by the bytes it writes, each twice (once
//! to the WAL, once more by the checkpoint), and the kernel time those writes cost. A 6 KB
//! GitHub event spills into an overflow page; compressed (about 2–4× on webhook JSON) it fits in
//! its table leaf, so an event writes about half the pages it did. Snappy is used because it is
//! the cheapest of the codecs measured on a 4.3 KB GitHub event (snappy 4.4 µs to 1,951 bytes,
//! lz4 6.6 µs to 1,914, zstd level 1 10.4 µs to 1,422), and the compression runs on the
//! request's task, not on the writer thread every commit waits for.
//!
//! The format: a body column holds either TEXT (the JSON as it is; everything written before
//! this existed, and bodies that do not compress, such as sealed ones) or a BLOB whose first
//! byte names the codec (`1`: a raw Snappy block) followed by the compressed bytes. Bodies are
//! never BLOBs otherwise, so the column's type tells the two apart.

use bytes::Bytes;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};

/// The codec byte of a raw Snappy block.
const SNAPPY: u8 = 1;

/// Bodies shorter than this are kept as text: they would fit in a leaf anyway.
const MIN_PACK: usize = 512;

/// Largest compression buffer a thread keeps for reuse.
const MAX_SCRATCH: usize = 256 * 1024;

/// Largest body a stored blob may claim to hold (well above any accepted request body): a
/// damaged file must give an error, not a huge allocation.
const MAX_UNPACKED: usize = 256 * 1024 * 1024;

thread_local! {
    /// A Snappy encoder (it keeps its hash table) and an output buffer, per thread.
    static SCRATCH: std::cell::RefCell<(snap::raw::Encoder, Vec<u8>)> =
        std::cell::RefCell::new((snap::raw::Encoder::new(), Vec::new()));
}

/// A body ready to bind: the text as it is, or its compressed form.
#[derive(Debug, Clone)]
pub enum Packed {
    Text(Bytes),
    Blob(Vec<u8>),
}

impl Packed {
    /// Compresses `body` (UTF-8 JSON) when that saves at least an eighth of it.
    pub fn new(body: &Bytes) -> Packed {
        if body.len() < MIN_PACK {
            return Packed::Text(body.clone());
        }
        // Compressed into this thread's scratch buffer and copied out at its final size: a
        // fresh zeroed buffer of the worst-case size (a third more than the body) per body cost
        // a third as much as the compression itself. (Rare large bodies get a buffer of their
        // own, so no thread keeps one that size.)
        let need = snap::raw::max_compress_len(body.len());
        let pack = |encoder: &mut snap::raw::Encoder, buf: &mut [u8]| {
            match encoder.compress(body, buf) {
                // The codec byte plus `n` bytes of Snappy save at least an eighth.
                Ok(n) if n < body.len() - body.len() / 8 => {
                    let mut out = Vec::with_capacity(1 + n);
                    out.push(SNAPPY);
                    out.extend_from_slice(&buf[..n]);
                    Packed::Blob(out)
                }
                _ => Packed::Text(body.clone()),
            }
        };
        if need > MAX_SCRATCH {
            return pack(&mut snap::raw::Encoder::new(), &mut vec![0; need]);
        }
        SCRATCH.with_borrow_mut(|(encoder, buf)| {
            if buf.len() < need {
                buf.resize(need, 0);
            }
            pack(encoder, buf)
        })
    }
}

impl rusqlite::ToSql for Packed {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        // Text is bound as it is, without a second UTF-8 check: bodies are serialized JSON
        // built from `String`s (that check of every 6 KB body was 2.6 % of the router's CPU,
        // on the writer thread). Reads still check (`Unpacked`).
        Ok(ToSqlOutput::Borrowed(match self {
            Packed::Text(t) => ValueRef::Text(t),
            Packed::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// The length of the body a stored value holds, without decompressing it.
pub fn unpacked_len(v: ValueRef<'_>) -> usize {
    match v {
        ValueRef::Text(t) => t.len(),
        ValueRef::Blob(b) if b.first() == Some(&SNAPPY) => {
            snap::raw::decompress_len(&b[1..]).unwrap_or(b.len())
        }
        ValueRef::Blob(b) => b.len(),
        _ => 0,
    }
}

/// A body read back: text as it is, a packed blob decompressed. Either way checked to be UTF-8.
pub struct Unpacked(pub String);

impl FromSql for Unpacked {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        match v {
            ValueRef::Text(_) => String::column_result(v).map(Unpacked),
            ValueRef::Blob(b) => unpack(b).map(Unpacked),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

fn unpack(b: &[u8]) -> FromSqlResult<String> {
    let other = |m: String| FromSqlError::Other(m.into());
    match b.split_first() {
        Some((&SNAPPY, data)) => {
            let len =
                snap::raw::decompress_len(data).map_err(|e| other(format!("stored body: {e}")))?;
            if len > MAX_UNPACKED {
                return Err(other(format!("stored body claims {len} bytes")));
            }
            let bytes = snap::raw::Decoder::new()
                .decompress_vec(data)
                .map_err(|e| other(format!("stored body: {e}")))?;
            String::from_utf8(bytes).map_err(|e| other(format!("stored body: {e}")))
        }
        Some((codec, _)) => Err(other(format!("stored body: unknown codec {codec}"))),
        None => Err(other("stored body: empty blob".into())),
    }
}

/// `len` letters of a xorshift stream: text Snappy finds nothing in, as in a sealed body.
#[cfg(test)]
pub(super) fn incompressible(len: usize) -> String {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ToSql;

    fn round_trip(p: &Packed) -> FromSqlResult<String> {
        let out = p.to_sql().unwrap();
        let ToSqlOutput::Borrowed(v) = out else {
            panic!("bodies are bound borrowed")
        };
        Unpacked::column_result(v).map(|u| u.0)
    }

    #[test]
    fn json_is_packed_and_comes_back_the_same() {
        let body = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "action": "opened",
                "repository": {"url": "https://api.github.com/repos/acme/widgets",
                               "html_url": "https://github.com/acme/widgets"},
                "body": "retry backoff delivery ".repeat(60),
            }))
            .unwrap(),
        );
        let p = Packed::new(&body);
        let Packed::Blob(ref blob) = p else {
            panic!("repetitive JSON should compress")
        };
        assert!(
            blob.len() < body.len() / 2,
            "{} of {}",
            blob.len(),
            body.len()
        );
        assert_eq!(unpacked_len(ValueRef::Blob(blob)), body.len());
        assert_eq!(round_trip(&p).unwrap().as_bytes(), &body[..]);
    }

    #[test]
    fn a_body_larger_than_the_scratch_buffer_is_packed_too() {
        let body = Bytes::from(format!("{{\"log\":\"{}\"}}", "build ok; ".repeat(40_000)));
        let Packed::Blob(blob) = Packed::new(&body) else {
            panic!("repetitive JSON should compress")
        };
        assert_eq!(
            round_trip(&Packed::Blob(blob)).unwrap().as_bytes(),
            &body[..]
        );
    }

    #[test]
    fn short_or_incompressible_bodies_stay_text() {
        let short = Bytes::from_static(b"{\"a\":1}");
        assert!(matches!(Packed::new(&short), Packed::Text(_)));
        let noise = incompressible(4096);
        let p = Packed::new(&Bytes::from(noise.clone()));
        assert!(matches!(p, Packed::Text(_)));
        assert_eq!(round_trip(&p).unwrap(), noise);
        assert_eq!(unpacked_len(ValueRef::Text(noise.as_bytes())), noise.len());
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        for bad in [
            &b""[..],
            &[7, 1, 2, 3][..],
            &[SNAPPY][..],
            &[SNAPPY, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
            &[SNAPPY, 10, 0, b'a'][..],
        ] {
            assert!(
                Unpacked::column_result(ValueRef::Blob(bad)).is_err(),
                "{bad:?}"
            );
        }
        // Valid Snappy, but not UTF-8.
        let mut blob = vec![SNAPPY];
        blob.extend(
            snap::raw::Encoder::new()
                .compress_vec(&[0xff; 600])
                .unwrap(),
        );
        assert!(Unpacked::column_result(ValueRef::Blob(&blob)).is_err());
    }
}
