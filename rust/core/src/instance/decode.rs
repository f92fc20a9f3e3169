//! Go's `json.Unmarshal` into a [`ServiceInstance`]: tolerant, with Go's semantics.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::ServiceInstance;
use crate::error::{Error, Result};

/// Go's decoder refuses JSON nested deeper than this; `serde_json` only limits
/// the levels it builds values for, not the ones it skips.
const GO_MAX_NESTING: usize = 10_000;

impl ServiceInstance {
    /// Decodes a stored value with the semantics of Go's `json.Unmarshal` into
    /// a zero `ServiceInstance`, so that anything a Go peer wrote reads back
    /// the same here:
    ///
    /// * The top level must be an object, or the literal `null` (which yields
    ///   the default instance, as Go leaves the struct untouched).
    /// * Field names match case-insensitively (ASCII folding plus Go's `ſ`/`K`
    ///   folds); unknown fields are skipped whatever they hold.
    /// * `null` leaves a string field as it was, and resets `metadata` or
    ///   `endpoints` to empty. Repeated fields are applied in order: a later
    ///   string or list replaces an earlier one, a later object is merged into
    ///   the earlier metadata. Inside `metadata` and `endpoints`, a `null`
    ///   element becomes `""`.
    /// * Invalid UTF-8 and unpaired UTF-16 surrogate escapes inside strings
    ///   become U+FFFD (one per offending byte or escape, like Go) instead of
    ///   failing the whole value.
    ///
    /// The result is not validated; call [`ServiceInstance::validate`] for that.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInstance`] for malformed JSON, a top level other than
    /// an object or `null`, trailing data, or a field of the wrong type (the
    /// message names the field).
    pub fn from_json(data: &[u8]) -> Result<ServiceInstance> {
        let text = go_string_semantics(data);
        if exceeds_go_nesting(text.as_bytes()) {
            return Err(Error::InvalidInstance(
                format!("invalid service instance JSON: nested deeper than {GO_MAX_NESTING} levels").into(),
            ));
        }
        let mut json = serde_json::Deserializer::from_str(&text);
        let instance = json.deserialize_any(InstanceVisitor).map_err(json_error)?;
        json.end().map_err(json_error)?;
        Ok(instance)
    }
}

fn json_error(err: serde_json::Error) -> Error {
    Error::InvalidInstance(format!("invalid service instance JSON: {err}").into())
}

/// Rewrites the input so that `serde_json`, which is strict about text, decodes
/// strings the way Go does: every byte that is not part of valid UTF-8 becomes
/// one U+FFFD, and every `\uXXXX` escape of a UTF-16 surrogate that is not
/// part of a proper pair becomes `\ufffd`. Outside string literals such bytes
/// are a syntax error either way. Valid input (the normal case) is borrowed
/// after one validation pass and one scan for backslashes.
fn go_string_semantics(data: &[u8]) -> Cow<'_, str> {
    let mut text = match std::str::from_utf8(data) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(replace_invalid_utf8_per_byte(data)),
    };
    let lone = lone_surrogate_escapes(text.as_bytes());
    if !lone.is_empty() {
        let owned = text.to_mut();
        for at in lone {
            owned.replace_range(at..at + 4, "fffd");
        }
    }
    text
}

/// Whether the JSON text opens more than [`GO_MAX_NESTING`] arrays or objects
/// inside each other, which Go refuses even in fields it would skip. Only an
/// input longer than the limit can do that, so typical values are not scanned.
fn exceeds_go_nesting(bytes: &[u8]) -> bool {
    if bytes.len() <= GO_MAX_NESTING {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > GO_MAX_NESTING {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Like `String::from_utf8_lossy`, except that it emits one U+FFFD per invalid
/// byte (Go's decoder does) rather than one per maximal invalid sequence.
fn replace_invalid_utf8_per_byte(data: &[u8]) -> String {
    let mut text = String::with_capacity(data.len() + 16);
    for chunk in data.utf8_chunks() {
        text.push_str(chunk.valid());
        for _ in chunk.invalid() {
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    text
}

/// Offsets of the four hex digits of every `\u` escape that encodes a UTF-16
/// surrogate without its partner. Go decodes such an escape to U+FFFD and
/// then reads the following escape on its own; `serde_json` refuses it.
///
/// Backslashes only occur inside strings in valid JSON, and each one starts an
/// escape, so skipping escape by escape keeps `\\ud800` (an escaped backslash
/// followed by text) from being mistaken for an escape.
fn lone_surrogate_escapes(bytes: &[u8]) -> Vec<usize> {
    fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(digits, 16).ok()
    }
    let is_high = |unit: u16| (0xD800..0xDC00).contains(&unit);
    let is_low = |unit: u16| (0xDC00..0xE000).contains(&unit);

    let mut lone = Vec::new();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'\\') {
        let escape = i + offset;
        if bytes.get(escape + 1) != Some(&b'u') {
            // A one-character escape (or a syntax error serde_json reports).
            i = (escape + 2).min(bytes.len());
            continue;
        }
        let Some(unit) = hex4(bytes, escape + 2) else {
            i = escape + 2;
            continue;
        };
        i = escape + 6;
        if is_high(unit) && bytes.get(i..i + 2) == Some(b"\\u") && hex4(bytes, i + 2).is_some_and(is_low) {
            i += 6;
        } else if is_high(unit) || is_low(unit) {
            lone.push(escape + 2);
        }
    }
    lone
}

/// The struct fields, as matched by Go: exact names first, then folded.
#[derive(Clone, Copy)]
enum Field {
    Id,
    Name,
    Version,
    Metadata,
    Endpoints,
    Unknown,
}

impl Field {
    fn from_key(key: &str) -> Field {
        const FIELDS: [(&str, Field); 5] = [
            ("id", Field::Id),
            ("name", Field::Name),
            ("version", Field::Version),
            ("metadata", Field::Metadata),
            ("endpoints", Field::Endpoints),
        ];
        FIELDS
            .iter()
            .find(|(name, _)| *name == key)
            .or_else(|| FIELDS.iter().find(|(name, _)| go_fold_eq(key, name)))
            .map_or(Field::Unknown, |&(_, field)| field)
    }
}

/// Whether `key` equals the lowercase ASCII `name` under Go's field-name
/// folding (`bytes.EqualFold`): ASCII case, plus the only two non-ASCII
/// characters that fold to ASCII letters, U+017F (ſ) to `s` and U+212A
/// (Kelvin sign) to `k`.
fn go_fold_eq(key: &str, name: &str) -> bool {
    let folded = |c: char| match c {
        '\u{17F}' => Some(b's'),
        '\u{212A}' => Some(b'k'),
        c if c.is_ascii() => Some((c as u8).to_ascii_lowercase()),
        _ => None,
    };
    let mut chars = key.chars();
    name.bytes().all(|expected| chars.next().and_then(folded) == Some(expected)) && chars.next().is_none()
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(Field::from_key(key))
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// The top-level value: an object, or `null` for the zero instance.
struct InstanceVisitor;

impl<'de> Visitor<'de> for InstanceVisitor {
    type Value = ServiceInstance;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<ServiceInstance, E> {
        Ok(ServiceInstance::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServiceInstance, A::Error> {
        let mut instance = ServiceInstance::default();
        // `instance.endpoints` doubles as Go's slice backing array, which can
        // hold more elements than the current length (see `EndpointsInto`).
        let mut endpoints_len = 0;
        while let Some(field) = map.next_key::<Field>()? {
            let (slot, what) = match field {
                Field::Id => (&mut instance.id, "\"id\""),
                Field::Name => (&mut instance.name, "\"name\""),
                Field::Version => (&mut instance.version, "\"version\""),
                Field::Metadata => {
                    map.next_value_seed(MetadataInto(&mut instance.metadata))?;
                    continue;
                }
                Field::Endpoints => {
                    endpoints_len = map.next_value_seed(EndpointsInto(&mut instance.endpoints))?;
                    continue;
                }
                Field::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            // Go leaves a string field untouched when the value is null.
            if let Some(value) = map.next_value_seed(NullableString { what })? {
                *slot = value;
            }
        }
        instance.endpoints.truncate(endpoints_len);
        Ok(instance)
    }
}

/// A JSON string, or `None` for `null`; anything else is an error that says
/// `what` was expected to be a string.
struct NullableString {
    what: &'static str,
}

impl<'de> DeserializeSeed<'de> for NullableString {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Visitor<'_> for NullableString {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string or null for {}", self.what)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Some(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Some(value))
    }
}

/// Decodes `metadata` into an existing map, as Go does: `null` empties it, an
/// object adds to (rather than replaces) what an earlier `metadata` field
/// left, and a `null` value is stored as `""`.
struct MetadataInto<'a>(&'a mut BTreeMap<String, String>);

impl<'de> DeserializeSeed<'de> for MetadataInto<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MetadataInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of strings or null for \"metadata\"")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.clear();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const WHAT: NullableString = NullableString { what: "a \"metadata\" value" };
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(WHAT)?.unwrap_or_default();
            self.0.insert(key, value);
        }
        Ok(())
    }
}

/// Decodes `endpoints` the way Go decodes into an existing slice, returning
/// the new length. The vector plays the part of Go's backing array: Go
/// overwrites elements in place and only shortens the length, so a `null`
/// element keeps whatever an earlier `endpoints` field left at that index (or
/// `""` past its end). `null` and `[]` both start over with an empty slice.
struct EndpointsInto<'a>(&'a mut Vec<String>);

impl<'de> DeserializeSeed<'de> for EndpointsInto<'_> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EndpointsInto<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings or null for \"endpoints\"")
    }

    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        self.0.clear();
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        const WHAT: NullableString = NullableString { what: "an \"endpoints\" element" };
        let backing = self.0;
        let mut len = 0;
        while let Some(element) = seq.next_element_seed(WHAT)? {
            match (element, backing.get_mut(len)) {
                (Some(value), Some(slot)) => *slot = value,
                (Some(value), None) => backing.push(value),
                (None, Some(_)) => {}
                (None, None) => backing.push(String::new()),
            }
            len += 1;
        }
        if len == 0 {
            backing.clear();
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    // -- Round trip --------------------------------------------------------------

    /// A small deterministic generator, so failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn string(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a", "Z", "0", "-", "/", ":", " ", "\"", "\\", "<", ">", "&", "\u{0}", "\u{8}", "\u{c}",
                "\n", "\r", "\t", "\u{1f}", "\u{7f}", "\u{85}", "é", "中", "😀", "\u{2028}", "\u{2029}",
                "\u{202a}", "\u{fffd}", "\\u", "ud800", "\u{17f}",
            ];
            (0..self.below(10)).map(|_| PIECES[self.below(PIECES.len())]).collect()
        }

        fn instance(&mut self) -> ServiceInstance {
            ServiceInstance {
                id: self.string(),
                name: self.string(),
                version: self.string(),
                metadata: (0..self.below(4)).map(|_| (self.string(), self.string())).collect(),
                endpoints: (0..self.below(4)).map(|_| self.string()).collect(),
            }
        }
    }

    #[test]
    fn round_trips_varied_instances() {
        let mut fixed = vec![
            seed_instance(),
            ServiceInstance::default(),
            instance("", "", "", &[("", "")], &[""]),
            instance("\u{0}", "\u{2028}", "\\ud800", &[("\u{7f}", "<>&")], &["\"", "\\"]),
        ];
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        fixed.extend((0..2000).map(|_| rng.instance()));
        for original in fixed {
            let encoded = original.to_json();
            assert_eq!(ServiceInstance::from_json(&encoded).unwrap(), original);
            // An independent decoder must read the same strings back.
            let value: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
            assert_eq!(value["id"], original.id.as_str());
            assert_eq!(value["version"], original.version.as_str());
        }
    }

    // -- Decoding ------------------------------------------------------------------
    //
    // Every behaviour below was checked against Go's json.Unmarshal into the Go
    // struct (Go 1.19), besides a differential run over a million generated
    // inputs.

    #[test]
    fn decodes_what_it_encodes_from_the_seed() {
        let text = r#"{"id":"user-service-001","name":"user-service","version":"1.0.0","metadata":{"region":"us-west-1","weight":"100","zone":"zone-a"},"endpoints":["grpc://192.168.1.100:8080"]}"#;
        assert_eq!(decode(text), seed_instance());
    }

    #[test]
    fn top_level_null_and_empty_object_give_the_default() {
        for text in ["null", " null ", "\t\r\nnull\n", "{}", " { } "] {
            assert_eq!(decode(text), ServiceInstance::default(), "{text:?}");
        }
    }

    #[test]
    fn refuses_anything_but_an_object_or_null() {
        for text in [
            "",
            "  ",
            "[]",
            "[{}]",
            "1",
            "-0.5",
            "\"x\"",
            "true",
            "nul",
            "nulll",
            "{} x",
            "{}{}",
            "null null",
            r#"{"id":"a"}garbage"#,
            "\u{feff}{}",
            "{'id':'a'}",
        ] {
            decode_error(text);
        }
        assert!(decode_error("[]").contains("expected a JSON object or null"));
        assert!(decode_error("{} x").contains("trailing"));
    }

    #[test]
    fn refuses_malformed_objects() {
        for text in [
            r#"{"id":"a""#,
            r#"{"id":"a",}"#,
            r#"{"id":01}"#,
            r#"{"id" "x"}"#,
            r#"{"id":"x" "name":"y"}"#,
            r#"{"id":-}"#,
            r#"{"endpoints":["a"]]"#,
            r#"{"metadata":{"a":"b"}"#,
            r#"{"id":"\x"}"#,
            r#"{"id":"\u12"}"#,
            r#"{"id":"\uZZZZ"}"#,
            r#"{"id":"\uD800\uZZZZ"}"#,
            "{\"id\":\"tab\there\"}",
            "{\"id\":\"nul\u{0}\"}",
        ] {
            decode_error(text);
        }
    }

    #[test]
    fn matches_field_names_case_insensitively() {
        let text = r#"{"ID":"a","NAME":"b","Version":"c","MetaData":{"k":"v"},"EndPoints":["e"]}"#;
        assert_eq!(decode(text), instance("a", "b", "c", &[("k", "v")], &["e"]));
        // Go folds U+017F (long s) to 's' as well.
        let long_s = "{\"verſion\":\"1\",\"endpointſ\":[\"x\"],\"ENDPOINTſ\":[\"y\"]}";
        assert_eq!(decode(long_s), instance("", "", "1", &[], &["y"]));
        // Escapes in names are decoded before matching.
        assert_eq!(decode(r#"{"\u0069d":"x","n\u0061me":"y"}"#).name, "y");
        // Other Unicode look-alikes are different names.
        assert_eq!(decode("{\"İd\":\"x\",\"ıd\":\"y\",\"ids\":\"z\"}").id, "");
        assert!(go_fold_eq("\u{212a}ey", "key"));
        assert!(!go_fold_eq("key", "keys"));
        assert!(!go_fold_eq("keys", "key"));
    }

    #[test]
    fn ignores_unknown_fields_of_any_shape() {
        let text = r#"{"x":{"y":[1,2,{"z":null}]},"y":[{}],"z":1e999,"w":-0.5e-3,"v":true,"":"","id":"after-unknown","\ud800":"\udc00"}"#;
        assert_eq!(decode(text).id, "after-unknown");
        let deep = format!(
            r#"{{"x":{}{},"y":{}1{},"id":"deep"}}"#,
            "[".repeat(1000),
            "]".repeat(1000),
            r#"{"a":"#.repeat(1000),
            "}".repeat(1000)
        );
        assert_eq!(decode(deep).id, "deep");
    }

    #[test]
    fn refuses_nesting_deeper_than_go_allows() {
        // The enclosing object is level one, so Go takes 9999 arrays in "x"
        // and refuses 10000.
        let nested =
            |levels: usize| format!(r#"{{"x":{}{},"id":"deep"}}"#, "[".repeat(levels), "]".repeat(levels));
        assert_eq!(decode(nested(9_999)).id, "deep");
        assert!(decode_error(nested(10_000)).contains("nested deeper than 10000 levels"));
        // Brackets inside strings do not count.
        let quoted = format!(r#"{{"x":"{}","id":"ok"}}"#, "[".repeat(20_000));
        assert_eq!(decode(quoted).id, "ok");
        let escaped = format!(r#"{{"x":"\\\"{}","id":"ok"}}"#, "[".repeat(20_000));
        assert_eq!(decode(escaped).id, "ok");
    }

    #[test]
    fn missing_and_null_fields_default() {
        assert_eq!(decode(r#"{"id":"a"}"#), instance("a", "", "", &[], &[]));
        let nulls = r#"{"id":null,"name":null,"version":null,"metadata":null,"endpoints":null}"#;
        assert_eq!(decode(nulls), ServiceInstance::default());
    }

    #[test]
    fn repeated_fields_apply_in_order_like_go() {
        assert_eq!(decode(r#"{"id":"a","id":"b"}"#).id, "b");
        assert_eq!(decode(r#"{"id":"a","ID":"b"}"#).id, "b");
        // null leaves a string as it was.
        assert_eq!(decode(r#"{"id":"a","id":null}"#).id, "a");
        assert_eq!(decode(r#"{"ID":"x","id":"y","Id":null}"#).id, "y");
    }

    #[test]
    fn metadata_nulls_merges_and_resets_like_go() {
        let metadata = |text: &str| decode(text).metadata;
        let map = |pairs: &[(&str, &str)]| instance("", "", "", pairs, &[]).metadata;
        assert_eq!(metadata(r#"{"metadata":{"a":null}}"#), map(&[("a", "")]));
        assert_eq!(metadata(r#"{"metadata":{"a":"x","a":null}}"#), map(&[("a", "")]));
        assert_eq!(
            metadata(r#"{"metadata":{"":"empty-key","k":"v"}}"#),
            map(&[("", "empty-key"), ("k", "v")])
        );
        // A second object is merged into the first; null empties the map.
        assert_eq!(
            metadata(r#"{"metadata":{"a":"1"},"metadata":{"b":"2"}}"#),
            map(&[("a", "1"), ("b", "2")])
        );
        assert_eq!(metadata(r#"{"metadata":{"a":"1"},"metadata":{"a":null}}"#), map(&[("a", "")]));
        assert_eq!(metadata(r#"{"metadata":{"a":"1"},"metadata":{}}"#), map(&[("a", "1")]));
        assert_eq!(
            metadata(r#"{"metadata":{"a":"1"},"metadata":null,"metadata":{"b":"2"}}"#),
            map(&[("b", "2")])
        );
    }

    #[test]
    fn endpoints_nulls_and_repeats_like_go() {
        let endpoints = |text: &str| decode(text).endpoints;
        assert_eq!(endpoints(r#"{"endpoints":[null]}"#), [""]);
        assert_eq!(endpoints(r#"{"endpoints":["a",null,"b"]}"#), ["a", "", "b"]);
        assert_eq!(endpoints(r#"{"endpoints":[]}"#), Vec::<String>::new());
        assert_eq!(endpoints(r#"{"endpoints":["a","b"],"endpoints":["c"]}"#), ["c"]);
        // Go decodes into the existing slice in place: a null element keeps
        // what an earlier list left at that index...
        assert_eq!(endpoints(r#"{"endpoints":["a","b"],"endpoints":[null]}"#), ["a"]);
        assert_eq!(
            endpoints(r#"{"endpoints":["a","b"],"endpoints":["c"],"endpoints":[null,null]}"#),
            ["c", "b"]
        );
        // ...but an empty list or null starts over.
        assert_eq!(endpoints(r#"{"endpoints":["a","b"],"endpoints":[],"endpoints":[null,null]}"#), ["", ""]);
        assert_eq!(endpoints(r#"{"endpoints":["a","b"],"endpoints":null,"endpoints":[null]}"#), [""]);
    }

    #[test]
    fn refuses_wrong_types_naming_the_field() {
        for (text, named) in [
            (r#"{"id":5}"#, "\"id\""),
            (r#"{"id":true}"#, "\"id\""),
            (r#"{"id":{}}"#, "\"id\""),
            (r#"{"id":[]}"#, "\"id\""),
            (r#"{"Name":1.5}"#, "\"name\""),
            (r#"{"version":false}"#, "\"version\""),
            (r#"{"metadata":[]}"#, "\"metadata\""),
            (r#"{"metadata":"x"}"#, "\"metadata\""),
            (r#"{"metadata":{"a":5}}"#, "\"metadata\" value"),
            (r#"{"metadata":{"a":{}}}"#, "\"metadata\" value"),
            (r#"{"endpoints":{}}"#, "\"endpoints\""),
            (r#"{"endpoints":"x"}"#, "\"endpoints\""),
            (r#"{"endpoints":[5]}"#, "\"endpoints\" element"),
            (r#"{"endpoints":[[]]}"#, "\"endpoints\" element"),
            (r#"{"id":5,"name":"still-decoded-by-go"}"#, "\"id\""),
        ] {
            let message = decode_error(text);
            assert!(message.contains(named), "{text}: {message}");
        }
    }

    #[test]
    fn decodes_escapes_and_raw_del() {
        assert_eq!(decode(r#"{"id":"a\/b\u00e9\u4e2d"}"#).id, "a/bé中");
        assert_eq!(decode(r#"{"id":"\u0000\u001f"}"#).id, "\u{0}\u{1f}");
        assert_eq!(decode(r#"{"id":"\ud83d\ude00"}"#).id, "😀");
        assert_eq!(decode("{\"id\":\"del\u{7f}\"}").id, "del\u{7f}");
    }

    #[test]
    fn replaces_invalid_utf8_one_replacement_per_byte_like_go() {
        let id = |bytes: &[u8]| {
            let mut text = b"{\"id\":\"".to_vec();
            text.extend_from_slice(bytes);
            text.extend_from_slice(b"\"}");
            decode(text).id
        };
        assert_eq!(id(b"bad\xff\xfeutf8"), "bad\u{fffd}\u{fffd}utf8");
        // A truncated sequence is one replacement per byte in Go, where
        // `String::from_utf8_lossy` would write a single one.
        assert_eq!(id(b"trunc\xe4\xb8."), "trunc\u{fffd}\u{fffd}.");
        assert_eq!(id(b"trunc4\xf0\x9f\x98."), "trunc4\u{fffd}\u{fffd}\u{fffd}.");
        assert_eq!(id(b"surr\xed\xa0\x80."), "surr\u{fffd}\u{fffd}\u{fffd}.");
        assert_eq!(id(b"overlong\xc0\x80."), "overlong\u{fffd}\u{fffd}.");
        assert_eq!(id(b"end\xe4"), "end\u{fffd}");
        // In other places invalid bytes are skipped or refused as Go does.
        assert_eq!(decode(b"{\"x\":\"\xff\",\"id\":\"ok\"}").id, "ok");
        assert_eq!(decode(b"{\"i\xffd\":\"k\"}").id, "");
        decode_error(b"{\"id\":\"a\"}\xff");
        decode_error(b"\xff{}");
    }

    #[test]
    fn replaces_unpaired_surrogate_escapes_like_go() {
        let id = |escaped: &str| decode(format!(r#"{{"id":"{escaped}"}}"#)).id;
        assert_eq!(id(r"\ud800"), "\u{fffd}");
        assert_eq!(id(r"\udc00"), "\u{fffd}");
        assert_eq!(id(r"\ud800\u0041"), "\u{fffd}A");
        assert_eq!(id(r"\ud800x"), "\u{fffd}x");
        assert_eq!(id(r"\ud800\n"), "\u{fffd}\n");
        assert_eq!(id(r"\udc00\ud800"), "\u{fffd}\u{fffd}");
        // The second escape of a failed pair starts its own pair.
        assert_eq!(id(r"\ud800\ud800\udc00"), "\u{fffd}\u{10000}");
        assert_eq!(id(r"\uDBFF\uDFFF"), "\u{10ffff}");
        // An escaped backslash followed by text is not an escape.
        assert_eq!(id(r"\\ud800"), r"\ud800");
        assert_eq!(id(r"\\\ud800"), "\\\u{fffd}");
        assert_eq!(
            decode(r#"{"metadata":{"\ud800":"\udfff"}}"#).metadata,
            instance("", "", "", &[("\u{fffd}", "\u{fffd}")], &[]).metadata
        );
    }

    #[test]
    fn borrows_valid_input_unchanged() {
        assert!(matches!(go_string_semantics(br#"{"id":"\\ud800\n\u00e9\ud83d\ude00"}"#), Cow::Borrowed(_)));
    }
}
