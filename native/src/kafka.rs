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

/// `records` as batches of at most `max_bytes` each (module doc): (bytes, record count).
pub fn batches(records: &[Record<'_>], timestamp_ms: i64, max_bytes: usize) -> Vec<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut count = 0usize;
    let mut body = Vec::with_capacity(256);
    for record in records {
        body.clear();
        encode_record(&mut body, record, count as i64);
        let mut len = Vec::with_capacity(5);
        write_varint(&mut len, body.len() as i64);
        // aiokafka's compiled builder's rule: a batch stays below `max_bytes`
        if count > 0 && buf.len() + len.len() + body.len() >= max_bytes {
            out.push((finish(std::mem::take(&mut buf), count, timestamp_ms), count));
            count = 0;
            // the offset delta is the record's place in its own batch
            body.clear();
            encode_record(&mut body, record, 0);
            len.clear();
            write_varint(&mut len, body.len() as i64);
        }
        if count == 0 {
            buf.reserve(HEADER_BYTES + max_bytes.min(1 << 20));
            buf.resize(HEADER_BYTES, 0);
        }
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&body);
        count += 1;
    }
    if count > 0 {
        out.push((finish(buf, count, timestamp_ms), count));
    }
    out
}

fn encode_record(out: &mut Vec<u8>, r: &Record<'_>, offset_delta: i64) {
    out.push(0); // attributes
    write_varint(out, 0); // timestamp delta: every record at the batch's time
    write_varint(out, offset_delta);
    write_bytes(out, r.key);
    write_bytes(out, r.value);
    write_varint(out, r.headers.len() as i64);
    for (k, v) in &r.headers {
        write_bytes(out, Some(k));
        write_bytes(out, *v);
    }
}

fn write_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => write_varint(out, -1),
        Some(b) => {
            write_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Kafka's varint: zig-zag, then 7 bits a byte, least significant first.
fn write_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn finish(mut buf: Vec<u8>, count: usize, ts: i64) -> Vec<u8> {
    let length = (buf.len() - 12) as i32;
    let mut h = Vec::with_capacity(HEADER_BYTES);
    h.extend_from_slice(&0i64.to_be_bytes()); // base offset
    h.extend_from_slice(&length.to_be_bytes());
    h.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch: none (the broker sets it)
    h.push(2); // magic
    h.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    h.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, CreateTime
    h.extend_from_slice(&((count - 1) as i32).to_be_bytes()); // last offset delta
    h.extend_from_slice(&ts.to_be_bytes()); // first timestamp
    h.extend_from_slice(&ts.to_be_bytes()); // max timestamp
    h.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    h.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    h.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    h.extend_from_slice(&(count as i32).to_be_bytes());
    debug_assert_eq!(h.len(), HEADER_BYTES);
    buf[..HEADER_BYTES].copy_from_slice(&h);
    let crc = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
    buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_kafkas() {
        for (v, want) in
            [(0i64, vec![0u8]), (-1, vec![1]), (1, vec![2]), (63, vec![126]), (64, vec![128, 1]), (-65, vec![129, 1])]
        {
            let mut out = Vec::new();
            write_varint(&mut out, v);
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
