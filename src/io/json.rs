//! A minimal JSON reader for `.safetensors` headers: objects keep their key order, numbers keep
//! their text (so 64-bit offsets are read exactly), nesting is capped at [`MAX_DEPTH`]. And, for
//! JSON read with `serde_json` (plans), the byte offset of its errors.

use super::malformed;
use crate::error::Result;

const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(s) => s.parse().ok(),
            _ => None,
        }
    }
}

/// Parses one JSON document; `format` names the file format in errors, `base` offsets positions.
pub(crate) fn parse(text: &[u8], format: &'static str, base: usize) -> Result<Json> {
    let mut p = Parser {
        s: text,
        pos: 0,
        format,
        base,
    };
    let v = p.value(0)?;
    p.ws();
    if p.pos != text.len() {
        return Err(p.err("trailing characters after the JSON value"));
    }
    Ok(v)
}

/// The byte offset in `text` at which `serde_json` reported `e`: for input that ends too early, the
/// length of `text`; otherwise the first byte of the line it names plus its column minus 1
/// (serde_json counts columns in bytes, from 1). 0 for an error without a position (I/O).
#[cfg(feature = "serde")]
pub(crate) fn serde_error_offset(text: &str, e: &serde_json::Error) -> u64 {
    let (line, column) = (e.line(), e.column());
    if e.is_eof() {
        return text.len() as u64;
    }
    if line == 0 {
        return 0;
    }
    let line_start = match line {
        1 => 0,
        n => text
            .match_indices('\n')
            .nth(n - 2)
            .map_or(text.len(), |(i, _)| i + 1),
    };
    (line_start + column.saturating_sub(1)).min(text.len()) as u64
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    format: &'static str,
    base: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &str) -> crate::Error {
        malformed(
            self.format,
            self.base + self.pos,
            format!("JSON header: {reason}"),
        )
    }

    fn ws(&mut self) {
        while matches!(self.s.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<()> {
        self.ws();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", c as char)))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.ws();
        match self.s.get(self.pos) {
            Some(b'{') => {
                self.pos += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.s.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                    return Ok(Json::Object(kv));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    kv.push((k, self.value(depth + 1)?));
                    self.ws();
                    match self.s.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Json::Object(kv));
                        }
                        _ => return Err(self.err("expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.s.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                while matches!(
                    self.s.get(self.pos),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.pos += 1;
                }
                let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                if text.parse::<f64>().is_err() {
                    return Err(self.err("invalid number"));
                }
                Ok(Json::Number(text))
            }
            _ => Err(self.err("expected a value")),
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json> {
        if self.s[self.pos..].starts_with(w.as_bytes()) {
            self.pos += w.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.err("invalid \\u escape"))?;
        let v = u32::from_str_radix(text, 16).map_err(|_| self.err("invalid \\u escape"))?;
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        if self.s.get(self.pos) != Some(&b'"') {
            return Err(self.err("expected a string"));
        }
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.pos) else {
                return Err(self.err("unterminated string"));
            };
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.pos) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or_else(|| self.err("invalid code point"))?
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return Err(self.err("control character in string")),
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("invalid UTF-8 in string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_values_in_order() {
        let v = parse(
            br#" {"b": [1, 2.5e3, -3], "a": {"x": "q\u00e9\n"}, "t": true, "n": null} "#,
            "t",
            0,
        )
        .unwrap();
        let Json::Object(kv) = &v else { panic!() };
        assert_eq!(kv[0].0, "b");
        assert_eq!(
            v.get("a").and_then(|a| a.get("x")),
            Some(&Json::String("qé\n".into()))
        );
        assert_eq!(
            v.get("b"),
            Some(&Json::Array(vec![
                Json::Number("1".into()),
                Json::Number("2.5e3".into()),
                Json::Number("-3".into())
            ]))
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_errors_get_the_byte_offset_of_the_offending_character() {
        let at = |text: &str| {
            let e = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
            (serde_error_offset(text, &e), e.to_string())
        };
        let text = "{\"a\": 1,\n \"b\": x}";
        let (offset, message) = at(text);
        assert_eq!(message, "expected value at line 2 column 7");
        assert_eq!(offset, 15);
        assert_eq!(text.as_bytes()[15], b'x');
        let text = "[1,\n2,\n\n  tru]";
        let (offset, _) = at(text);
        assert_eq!(&text[offset as usize..], "]");
        // Truncated, with or without a newline last: the end of the input.
        for text in ["{\"a\": [1,\n", "{\"a\": [1,"] {
            let (offset, message) = at(text);
            assert!(message.starts_with("EOF while parsing"), "{message}");
            assert_eq!(offset, text.len() as u64);
        }
        // A value that parses but does not fit the type: its last byte, where serde_json stopped.
        let text = "[1, 2,\n -3]";
        let e = serde_json::from_str::<Vec<u8>>(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value: integer `-3`, expected u8 at line 2 column 3"
        );
        assert_eq!(serde_error_offset(text, &e), 9);
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        for bad in [
            &b"{"[..],
            b"{\"a\":}",
            b"[1,]",
            b"\"\\ud800\"",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
            b"{} x",
            b"tru",
        ] {
            assert!(
                parse(bad, "t", 0).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
