//! Reading component files with bounded time and memory, whatever their content.
//!
//! A component file is a few kilobytes of YAML, but the loader must not fall over on a hostile
//! or broken one. Three limits apply, each with an error that says which:
//!
//! * the file may be at most [`MAX_FILE_BYTES`] (a 50 MB value is refused before it is read);
//! * it may open at most [`MAX_FLOW_COLLECTIONS`] flow collections (`[` or `{`, counted as
//!   characters wherever they appear): the YAML scanner's work grows with the square of the
//!   flow nesting depth, so 100,000 nested `[` would otherwise take minutes;
//! * each document may expand to at most [`MAX_VALUES`] values and [`MAX_TEXT_BYTES`] bytes of
//!   strings, aliases counted at every use: this stops "billion laughs" and the quadratic
//!   variant (one large anchored list referenced many times) before they are built.

use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;
use serde_yaml::value::{Mapping, Tag, TaggedValue};

/// Largest component file read. Kubernetes keeps objects below 1.5 MiB; a component file is
/// usually a few KiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most `[` and `{` characters a file may contain.
pub const MAX_FLOW_COLLECTIONS: usize = 1024;
/// Most values (scalars, sequences, mappings; aliases counted at every use) in one document.
pub const MAX_VALUES: usize = 100_000;
/// Most bytes of string scalars (keys included; aliases counted at every use) in one document.
pub const MAX_TEXT_BYTES: usize = 4 << 20;

/// Why a file could not be read as YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlError {
    /// The file breaks one of the limits above (`doc` is 0 for file-wide limits).
    Limit {
        doc: usize,
        message: String,
    },
    /// The text is not YAML.
    Syntax {
        doc: usize,
        message: String,
    },
    Io(String),
}

/// Reads a file of at most [`MAX_FILE_BYTES`], without reading more than that of a larger one.
pub fn read_file(path: &Path) -> Result<String, YamlError> {
    let unreadable = |e: std::io::Error| YamlError::Io(format!("cannot read the file: {e}"));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let size = std::fs::metadata(path)
            .map(|m| format!("{} bytes", m.len()))
            .unwrap_or_else(|_| format!("more than {MAX_FILE_BYTES} bytes"));
        return Err(YamlError::Limit {
            doc: 0,
            message: format!(
                "the file is {size}; a component file may be at most {} KiB",
                MAX_FILE_BYTES / 1024
            ),
        });
    }
    String::from_utf8(bytes).map_err(|e| YamlError::Io(format!("the file is not UTF-8 text: {e}")))
}

/// Parses every document of `text` into a [`Value`], within the limits.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(YamlError::Limit {
            doc: 0,
            message: format!(
                "the text is {} bytes; a component file may be at most {} KiB",
                text.len(),
                MAX_FILE_BYTES / 1024
            ),
        });
    }
    let flow = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
    if flow > MAX_FLOW_COLLECTIONS {
        return Err(YamlError::Limit {
            doc: 0,
            message: format!(
                "the file has {flow} '[' or '{{' characters; a component file may have at most \
                 {MAX_FLOW_COLLECTIONS} (deeply nested flow collections make YAML parsing slow)"
            ),
        });
    }
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let budget = Budget {
            values: Cell::new(MAX_VALUES),
            text: Cell::new(MAX_TEXT_BYTES),
            exceeded: Cell::new(None),
        };
        match (&budget).deserialize(doc) {
            Ok(v) => docs.push(v),
            Err(e) => {
                return Err(match budget.exceeded.take() {
                    Some(message) => YamlError::Limit {
                        doc: i + 1,
                        message,
                    },
                    None => YamlError::Syntax {
                        doc: i + 1,
                        message: e.to_string(),
                    },
                });
            }
        }
    }
    Ok(docs)
}

/// What one document may still produce. Builds a [`Value`] exactly as `Value::deserialize`
/// does, charging every value and string against the budget.
struct Budget {
    values: Cell<usize>,
    text: Cell<usize>,
    exceeded: Cell<Option<String>>,
}

impl Budget {
    fn charge<E: de::Error>(&self, text_bytes: usize) -> Result<(), E> {
        let values = self.values.get();
        if values == 0 {
            return Err(self.fail(format!(
                "more than {MAX_VALUES} values once aliases are expanded; a component needs \
                 far fewer"
            )));
        }
        self.values.set(values - 1);
        let text = self.text.get();
        if text_bytes > text {
            return Err(self.fail(format!(
                "more than {} MiB of strings once aliases are expanded",
                MAX_TEXT_BYTES >> 20
            )));
        }
        self.text.set(text - text_bytes);
        Ok(())
    }

    fn fail<E: de::Error>(&self, message: String) -> E {
        let e = E::custom(&message);
        self.exceeded.set(Some(message));
        e
    }
}

impl<'de> DeserializeSeed<'de> for &Budget {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &Budget {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.charge(s.len())?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.charge(s.len())?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            let value = map.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use serde::de::VariantAccess;
        self.charge(0)?;
        let (tag, contents): (String, _) = data.variant()?;
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str) -> String {
        match parse_documents(text) {
            Err(YamlError::Limit { message, .. }) => message,
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn plain_documents_parse_as_serde_yaml_does() {
        let text =
            "a: 1\nb: [x, {c: true}]\nd: !tagged 2.5\ne: ~\nf: &anchor hi\ng: *anchor\n---\n- z\n";
        let docs = parse_documents(text).unwrap();
        let expected: Vec<Value> = serde_yaml::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs, expected);
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut text = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            text.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        assert!(parse_documents(&text).is_err());
    }

    #[test]
    fn quadratic_aliases_are_refused() {
        let n = 2000;
        let text = format!(
            "x: &x [{}]\ny: [{}]\n",
            vec!["1"; n].join(","),
            vec!["*x"; n].join(",")
        );
        // Only two flow collections, but 4 million values once expanded.
        assert!(limit(&text).contains("values once aliases are expanded"));
        let s = "s".repeat(100_000);
        let text = format!("x: &x {s}\ny: [{}]\n", vec!["*x"; 100].join(","));
        assert!(limit(&text).contains("of strings"));
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let n = 100_000;
        let text = format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert!(limit(&text).contains("'[' or '{'"));
        // Within the count, the parser's own depth limit answers.
        let text = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            parse_documents(&text),
            Err(YamlError::Syntax { .. })
        ));
    }

    #[test]
    fn large_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, format!("a: {}\n", "x".repeat(2 << 20))).unwrap();
        let Err(YamlError::Limit { message, .. }) = read_file(&path) else {
            panic!("expected a limit error")
        };
        assert!(message.contains("at most 1024 KiB"), "{message}");
        std::fs::write(&path, "a: b\n").unwrap();
        assert_eq!(read_file(&path).unwrap(), "a: b\n");
    }
}
