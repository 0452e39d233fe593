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
    // Two digits per step from a table (itoa, serde_json's own): a state row is
    // mostly 16-digit instants, and a digit-at-a-time loop was 3.5 % of the core.
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
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
    let mut i = 0;
    while i < bytes.len() {
        // Most strings (ids, names) need no escape: one table lookup per byte
        // until the next byte that does.
        let b = bytes[i];
        if !NEEDS_ESCAPE[b as usize] {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The bytes `write_str` escapes: control characters, the quote and the backslash.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

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
    fn every_ascii_character_escapes_like_orjson() {
        // orjson's rule, spelled out: the short escapes, other controls as \u00XX.
        for c in 0u8..0x80 {
            let want = match c {
                b'"' => "\\\"".to_string(),
                b'\\' => "\\\\".to_string(),
                b'\n' => "\\n".to_string(),
                b'\r' => "\\r".to_string(),
                b'\t' => "\\t".to_string(),
                0x08 => "\\b".to_string(),
                0x0c => "\\f".to_string(),
                0..=0x1f => format!("\\u{c:04x}"),
                _ => (c as char).to_string(),
            };
            let text = format!("x{}y{}", c as char, c as char);
            let mut out = Vec::new();
            write_str(&mut out, &text);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"x{want}y{want}\""), "byte {c:#x}");
        }
    }

    #[test]
    fn integers() {
        let mut v: i64 = 1;
        let mut cases = vec![0, 7, -7, 10, 99, 100, -100, 1_000_000, i64::MAX, i64::MIN, i64::MIN + 1];
        for _ in 0..2_000 {
            v = v.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            cases.extend([v, v >> 20, v >> 40, -(v >> 50)]);
        }
        for v in cases {
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
