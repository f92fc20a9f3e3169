//! Go's `json.Marshal` of a [`ServiceInstance`], byte for byte.

use super::ServiceInstance;

impl ServiceInstance {
    /// Encodes the instance exactly as Go's `json.Marshal` does (Go ≥ 1.22).
    ///
    /// Fields come in declaration order without any whitespace, metadata keys
    /// sorted by bytes, an empty map or list as `null`, and strings escaped the
    /// way Go's encoder escapes them by default: `<`, `>`, `&`, U+2028 and
    /// U+2029 as `\u` escapes so the value is safe to embed in HTML/JS, control
    /// characters as short escapes where JSON has them and `\u00xx` otherwise,
    /// and every other character (DEL and all non-ASCII included) as raw UTF-8.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.extend_from_slice(b"{\"id\":");
        write_json_string(&mut out, &self.id);
        out.extend_from_slice(b",\"name\":");
        write_json_string(&mut out, &self.name);
        out.extend_from_slice(b",\"version\":");
        write_json_string(&mut out, &self.version);
        out.extend_from_slice(b",\"metadata\":");
        if self.metadata.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            out.push(b'{');
            for (i, (key, value)) in self.metadata.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(&mut out, key);
                out.push(b':');
                write_json_string(&mut out, value);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"endpoints\":");
        if self.endpoints.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            out.push(b'[');
            for (i, endpoint) in self.endpoints.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(&mut out, endpoint);
            }
            out.push(b']');
        }
        out.push(b'}');
        out
    }

    /// A capacity that fits the encoding without reallocating unless many
    /// characters need escaping.
    fn encoded_len_hint(&self) -> usize {
        // `{"id":"","name":"","version":"","metadata":null,"endpoints":null}`
        const FIXED: usize = 66;
        let strings = self.id.len() + self.name.len() + self.version.len();
        let metadata: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
        let endpoints: usize = self.endpoints.iter().map(|e| e.len() + 3).sum();
        FIXED + strings + metadata + endpoints
    }
}

/// How the encoder treats each byte of a string.
const SAFE: u8 = 0;
const ESCAPE: u8 = 1;
/// First byte of U+2028/U+2029 (`E2 80 A8`/`E2 80 A9`), but also of many
/// characters that are written raw, so the next bytes decide.
const MAYBE_SEPARATOR: u8 = 2;

static BYTE_CLASS: [u8; 256] = {
    let mut table = [SAFE; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = ESCAPE;
        b += 1;
    }
    table[b'"' as usize] = ESCAPE;
    table[b'\\' as usize] = ESCAPE;
    table[b'<' as usize] = ESCAPE;
    table[b'>' as usize] = ESCAPE;
    table[b'&' as usize] = ESCAPE;
    table[0xE2] = MAYBE_SEPARATOR;
    table
};

/// Appends `s` as a JSON string literal escaped like Go's encoder (with its
/// default HTML escaping). Runs of bytes that need no escaping are copied in
/// one go, which is nearly every byte of a typical value.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let width = match BYTE_CLASS[usize::from(byte)] {
            SAFE => {
                i += 1;
                continue;
            }
            MAYBE_SEPARATOR => {
                if bytes.get(i + 1) == Some(&0x80) && matches!(bytes.get(i + 2), Some(0xA8 | 0xA9)) {
                    3
                } else {
                    i += 1;
                    continue;
                }
            }
            _ => 1,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            0xE2 => {
                out.extend_from_slice(b"\\u202");
                out.push(if bytes[i + 2] == 0xA8 { b'8' } else { b'9' });
            }
            // Control characters and `<`, `>`, `&`: all below 0x80, so the
            // escape is always `\u00` plus two hex digits.
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xF)],
            ]),
        }
        i += width;
        run_start = i;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    // -- Encoding --------------------------------------------------------------
    //
    // Every expected value in this section was produced by Go's encoding/json
    // (json.Marshal of the Go struct, Go 1.19) and compared byte for byte.
    // Go 1.19 writes \b and \f as \u0008 and \u000c; Go 1.22 and later write
    // the short forms, which is what is expected here.

    #[test]
    fn encodes_the_seed_example_like_go() {
        assert_eq!(
            json(&seed_instance()),
            r#"{"id":"user-service-001","name":"user-service","version":"1.0.0","metadata":{"region":"us-west-1","weight":"100","zone":"zone-a"},"endpoints":["grpc://192.168.1.100:8080"]}"#
        );
    }

    #[test]
    fn encodes_empty_metadata_and_endpoints_as_null() {
        let mut without_metadata = seed_instance();
        without_metadata.metadata.clear();
        assert_eq!(
            json(&without_metadata),
            r#"{"id":"user-service-001","name":"user-service","version":"1.0.0","metadata":null,"endpoints":["grpc://192.168.1.100:8080"]}"#
        );
        assert_eq!(
            json(&ServiceInstance::default()),
            r#"{"id":"","name":"","version":"","metadata":null,"endpoints":null}"#
        );
    }

    #[test]
    fn escapes_html_characters() {
        let html = instance("<a href=\"x\">&amp;</a>", "a&b", "<>", &[], &[]);
        assert_eq!(
            json(&html),
            r#"{"id":"\u003ca href=\"x\"\u003e\u0026amp;\u003c/a\u003e","name":"a\u0026b","version":"\u003c\u003e","metadata":null,"endpoints":null}"#
        );
    }

    #[test]
    fn escapes_quotes_and_backslashes() {
        let quoted = instance(r#"C:\path\"q""#, r"\\", "\"", &[], &[]);
        assert_eq!(
            json(&quoted),
            r#"{"id":"C:\\path\\\"q\"","name":"\\\\","version":"\"","metadata":null,"endpoints":null}"#
        );
    }

    #[test]
    fn escapes_control_characters_but_not_del_or_c1() {
        let controls = instance(
            "\u{0}\u{1}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{e}\u{1b}\u{1f}",
            "a\u{7f}b",
            "\u{80}\u{85}\u{9f}\u{a0}",
            &[],
            &[],
        );
        assert_eq!(
            json(&controls),
            concat!(
                r#"{"id":"\u0000\u0001\u0007\b\t\n\u000b\f\r\u000e\u001b\u001f","#,
                "\"name\":\"a\u{7f}b\",\"version\":\"\u{80}\u{85}\u{9f}\u{a0}\",",
                r#""metadata":null,"endpoints":null}"#
            )
        );
    }

    #[test]
    fn escapes_each_ascii_control_character_like_go() {
        for byte in 0u8..0x20 {
            let expected = match byte {
                0x08 => "\\b".to_owned(),
                0x09 => "\\t".to_owned(),
                0x0A => "\\n".to_owned(),
                0x0C => "\\f".to_owned(),
                0x0D => "\\r".to_owned(),
                _ => format!("\\u{byte:04x}"),
            };
            let mut out = Vec::new();
            write_json_string(&mut out, &format!("x{}y", char::from(byte)));
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"x{expected}y\""), "byte {byte:#04x}");
        }
    }

    #[test]
    fn escapes_only_the_two_line_separators_among_non_ascii() {
        let separators = instance(
            "\u{2027}\u{2028}\u{2029}\u{202a}",
            "line\u{2028}sep\u{2029}para",
            "\u{20ac}\u{2000}\u{e280}",
            &[],
            &[],
        );
        assert_eq!(
            json(&separators),
            concat!(
                "{\"id\":\"\u{2027}\\u2028\\u2029\u{202a}\",",
                r#""name":"line\u2028sep\u2029para","#,
                "\"version\":\"\u{20ac}\u{2000}\u{e280}\",",
                r#""metadata":null,"endpoints":null}"#
            )
        );
        // A separator cut short at the end of a string is not one.
        let mut out = Vec::new();
        write_json_string(&mut out, "\u{2028}\u{2029}");
        assert_eq!(out, b"\"\\u2028\\u2029\"");
    }

    #[test]
    fn writes_other_non_ascii_raw() {
        let unicode = instance("café", "中文服务", "😀\u{feff}\u{fffd}\u{10ffff}", &[], &[]);
        assert_eq!(
            json(&unicode),
            "{\"id\":\"café\",\"name\":\"中文服务\",\"version\":\"😀\u{feff}\u{fffd}\u{10ffff}\",\"metadata\":null,\"endpoints\":null}"
        );
    }

    #[test]
    fn escapes_metadata_keys_and_sorts_them_by_bytes() {
        let tricky = instance(
            "m",
            "n",
            "v",
            &[("<k>", "v&"), ("a\"b", "\\"), ("é", "中"), ("", ""), ("Z", "\n"), ("a", "\u{2028}")],
            &["[::1]:80", "h\"x", "", "<script>"],
        );
        assert_eq!(
            json(&tricky),
            r#"{"id":"m","name":"n","version":"v","metadata":{"":"","\u003ck\u003e":"v\u0026","Z":"\n","a":"\u2028","a\"b":"\\","é":"中"},"endpoints":["[::1]:80","h\"x","","\u003cscript\u003e"]}"#
        );
    }
}
