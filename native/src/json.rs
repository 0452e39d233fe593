//! JSON as the Python engine writes it (orjson, compact): the state rows, the
//! effects' digests and the score snapshots must be equal bytes, so this writer
//! emits exactly orjson's form for the values the core uses (integers, strings,
//! null, booleans, arrays, objects in insertion order, and the snapshot's
//! finite floats). The fold itself has no floats.

use std::sync::Arc;

/// A small JSON value for effects: objects keep insertion order.
#[derive(Clone, Debug, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Int(i64),
    Str(Arc<str>),
    Obj(Vec<(&'static str, J)>),
}

impl J {
    pub fn str(s: &str) -> J {
        J::Str(Arc::from(s))
    }
    pub fn opt_str(s: Option<&str>) -> J {
        match s {
            Some(s) => J::str(s),
            None => J::Null,
        }
    }
}

pub fn write_int(out: &mut Vec<u8>, v: i64) {
    // Digits into a stack buffer, back to front: no allocation per number.
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

pub fn write_opt_int(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => write_int(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A finite float as orjson writes it: the shortest text that reads back as the same
/// float (`0.3333`, `3.0`, `0.00001`, `1e+16`); serde_json's writer has that form
/// (checked against orjson by `tests/core/test_native.py`).
pub fn write_float(out: &mut Vec<u8>, v: f64) {
    debug_assert!(v.is_finite());
    serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail");
}

/// A JSON string as orjson writes it: `"` and `\` escaped, control characters
/// as `\b \t \n \f \r` or `\u00XX`, everything else as UTF-8.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// `v` as JSON; object keys sorted when `sorted` (orjson's OPT_SORT_KEYS).
pub fn write(out: &mut Vec<u8>, v: &J, sorted: bool) {
    match v {
        J::Null => out.extend_from_slice(b"null"),
        J::Bool(true) => out.extend_from_slice(b"true"),
        J::Bool(false) => out.extend_from_slice(b"false"),
        J::Int(i) => write_int(out, *i),
        J::Str(s) => write_str(out, s),
        J::Obj(items) => {
            out.push(b'{');
            if sorted {
                let mut order: Vec<&(&'static str, J)> = items.iter().collect();
                order.sort_by(|a, b| a.0.cmp(b.0));
                write_items(out, order.into_iter(), sorted);
            } else {
                write_items(out, items.iter(), sorted);
            }
            out.push(b'}');
        }
    }
}

fn write_items<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a (&'static str, J)>, sorted: bool) {
    for (n, (k, v)) in items.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write(out, v, sorted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_orjson() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\u{1}\u{1f}\u{7f}é\u{2028}");
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\\\c\\n\\u0001\\u001f\u{7f}é\u{2028}\"");
    }

    #[test]
    fn integers() {
        for v in [0, 7, -7, 10, 1_000_000, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_int(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn sorted_objects() {
        let v = J::Obj(vec![("b", J::Int(1)), ("a", J::Obj(vec![("d", J::Null), ("c", J::Bool(true))]))]);
        let mut out = Vec::new();
        write(&mut out, &v, true);
        assert_eq!(out, b"{\"a\":{\"c\":true,\"d\":null},\"b\":1}");
    }
}
