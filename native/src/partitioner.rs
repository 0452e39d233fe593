//! Kafka's default partitioner hash, for `streams.topics.partition_for`.
//!
//! Not part of the fold: the worker hashes a customer's key for its own
//! partition and for every output record, and aiokafka's hash is pure Python.
//! With a population larger than the caller's cache every event paid it
//! several times.
//!
//! Guarantee: `murmur2(key) & 0x7fffffff`, exactly what the Java client's
//! `Utils.toPositive(Utils.murmur2(key))` gives (and aiokafka's
//! `DefaultPartitioner`): records land where every other Kafka client puts
//! them. The tests compare it with aiokafka's and with the Java client's own
//! test vectors.

const SEED: u32 = 0x9747_b28c;
const M: u32 = 0x5bd1_e995;
const R: u32 = 24;

/// The positive 31-bit murmur2 hash of `data`, as Kafka's partitioner uses it.
pub fn positive_murmur2(data: &[u8]) -> u32 {
    // Kafka hashes the length as an i32; keys beyond 2 GiB cannot occur.
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::positive_murmur2;

    #[test]
    fn java_client_vectors() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed values there).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, signed) in cases {
            assert_eq!(positive_murmur2(data), (signed as u32) & 0x7fff_ffff, "{data:?}");
        }
    }
}
