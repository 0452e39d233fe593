//! Kafka record batches (message format v2) for the worker's producer
//! (`streams.publish`): what aiokafka's `DefaultRecordBatchBuilder` writes for
//! records appended without a timestamp, in one call per topic-partition
//! instead of one per record, with the CRC-32C in hardware where the CPU has it.
//!
//! Guarantees: a batch is the bytes aiokafka's builder writes for the same
//! records all given `timestamp_ms`: the v2 layout (KIP-98) with base offset 0,
//! partition leader epoch -1, no compression, CreateTime `timestamp_ms` for every record, no
//! producer id, epoch or sequence (-1: the idempotent producer is not served;
//! the caller checks that), a CRC-32C over everything from the attributes on.
//! A batch always takes its first record; a record that would take it to
//! `max_bytes` or past starts the next one (aiokafka's compiled builder's rule).
//! `tests/streams/test_publish.py` compares them with aiokafka's builder and
//! reader.

/// One record: key, value (None: a tombstone), headers.
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

const HEADER_BYTES: usize = 61;
const ATTRIBUTES_AT: usize = 21;
const CRC_AT: usize = 17;

/// How `records` split into batches of at most `max_bytes` (module doc): per batch
/// the range of its records and its exact size in bytes. Nothing is written yet,
/// so each batch is then written once into memory of its exact size.
pub fn split(records: &[Record<'_>], max_bytes: usize) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut out = Vec::new();
    let (mut first, mut size) = (0usize, HEADER_BYTES);
    for (i, record) in records.iter().enumerate() {
        let mut add = framed_len(record, (i - first) as i64);
        // aiokafka's compiled builder's rule: a batch stays below `max_bytes`
        if i > first && size + add >= max_bytes {
            out.push((first..i, size));
            (first, size) = (i, HEADER_BYTES);
            add = framed_len(record, 0);
        }
        size += add;
    }
    if first < records.len() {
        out.push((first..records.len(), size));
    }
    out
}

/// Write the batch of `records` into `out`, which is exactly the size `split` gave.
pub fn write(out: &mut [u8], records: &[Record<'_>], timestamp_ms: i64) {
    let mut w = Cursor { out, at: HEADER_BYTES };
    for (i, r) in records.iter().enumerate() {
        let body = body_len(r, i as i64);
        w.varint(body as i64);
        w.byte(0); // attributes
        w.varint(0); // timestamp delta: every record at the batch's time
        w.varint(i as i64); // offset delta
        w.bytes(r.key);
        w.bytes(r.value);
        w.varint(r.headers.len() as i64);
        for (k, v) in &r.headers {
            w.bytes(Some(k));
            w.bytes(*v);
        }
    }
    assert_eq!(w.at, w.out.len(), "the batch's size was computed by split()");
    let (count, total) = (records.len(), w.out.len());
    let mut h = Cursor { out: &mut w.out[..HEADER_BYTES], at: 0 };
    h.put(&0i64.to_be_bytes()); // base offset
    h.put(&((total - 12) as i32).to_be_bytes());
    h.put(&(-1i32).to_be_bytes()); // partition leader epoch: none (the broker sets it)
    h.byte(2); // magic
    h.put(&0u32.to_be_bytes()); // crc, below
    h.put(&0i16.to_be_bytes()); // attributes: no compression, CreateTime
    h.put(&((count - 1) as i32).to_be_bytes()); // last offset delta
    h.put(&timestamp_ms.to_be_bytes()); // first timestamp
    h.put(&timestamp_ms.to_be_bytes()); // max timestamp
    h.put(&(-1i64).to_be_bytes()); // producer id
    h.put(&(-1i16).to_be_bytes()); // producer epoch
    h.put(&(-1i32).to_be_bytes()); // base sequence
    h.put(&(count as i32).to_be_bytes());
    let crc = crc32c::crc32c(&w.out[ATTRIBUTES_AT..]);
    w.out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

struct Cursor<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self, b: u8) {
        self.out[self.at] = b;
        self.at += 1;
    }
    fn put(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    /// Kafka's varint: zig-zag, then 7 bits a byte, least significant first.
    fn varint(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.byte((z as u8) | 0x80);
            z >>= 7;
        }
        self.byte(z as u8);
    }
    fn bytes(&mut self, b: Option<&[u8]>) {
        match b {
            None => self.varint(-1),
            Some(b) => {
                self.varint(b.len() as i64);
                self.put(b);
            }
        }
    }
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        None => 1,
        Some(b) => varint_len(b.len() as i64) + b.len(),
    }
}

/// A record's bytes after its length prefix.
fn body_len(r: &Record<'_>, offset_delta: i64) -> usize {
    1 + 1
        + varint_len(offset_delta)
        + bytes_len(r.key)
        + bytes_len(r.value)
        + varint_len(r.headers.len() as i64)
        + r.headers.iter().map(|(k, v)| bytes_len(Some(k)) + bytes_len(*v)).sum::<usize>()
}

/// A record's bytes with its length prefix.
fn framed_len(r: &Record<'_>, offset_delta: i64) -> usize {
    let body = body_len(r, offset_delta);
    varint_len(body as i64) + body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `records` as batches (`split`, then `write`): (bytes, record count).
    fn batches(records: &[Record<'_>], timestamp_ms: i64, max_bytes: usize) -> Vec<(Vec<u8>, usize)> {
        split(records, max_bytes)
            .into_iter()
            .map(|(range, size)| {
                let mut out = vec![0u8; size];
                write(&mut out, &records[range.clone()], timestamp_ms);
                (out, range.len())
            })
            .collect()
    }

    #[test]
    fn varints_are_kafkas() {
        for (v, want) in
            [(0i64, vec![0u8]), (-1, vec![1]), (1, vec![2]), (63, vec![126]), (64, vec![128, 1]), (-65, vec![129, 1])]
        {
            let mut out = vec![0u8; want.len()];
            let mut c = Cursor { out: &mut out, at: 0 };
            c.varint(v);
            assert_eq!(c.at, varint_len(v));
            assert_eq!(out, want, "{v}");
        }
    }

    #[test]
    fn batches_split_at_max_bytes_but_always_take_one_record() {
        let big = vec![7u8; 100];
        let records: Vec<Record> =
            (0..5).map(|_| Record { key: Some(b"k"), value: Some(&big), headers: vec![] }).collect();
        let out = batches(&records, 1, 61 + 251);
        assert_eq!(out.iter().map(|b| b.1).collect::<Vec<_>>(), vec![2, 2, 1]);
        let out = batches(&records[..1], 1, 10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, 1);
    }
}
