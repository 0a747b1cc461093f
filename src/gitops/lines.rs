//! Where a field is in a YAML document: a tree of the document's nodes with their lines (from
//! the YAML parser's spans), walked by a field path such as `spec.conditions[0].key`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML node and, below it, its children with their lines.
#[derive(Debug, Clone, Default)]
pub struct Node {
    children: Children,
}

#[derive(Debug, Clone, Default)]
enum Children {
    #[default]
    None,
    Seq(Vec<Spanned<Node>>),
    /// Key, the line of the key, the value.
    Map(Vec<(String, usize, Spanned<Node>)>),
}

impl Node {
    /// Parses a document; `None` when it is not YAML (the caller reports that).
    pub fn parse(text: &str) -> Option<Spanned<Node>> {
        serde_saphyr::from_str::<Spanned<Node>>(text).ok()
    }
}

/// The 1-based line (within the document) of `path`, or of the deepest part of it that exists:
/// for a missing `spec.workspace`, the line of `spec`. `None` only for an empty path or tree.
pub fn line_of(root: &Spanned<Node>, path: &str) -> Option<usize> {
    let mut node = root;
    let mut line = None;
    for segment in segments(path) {
        let next = match (&node.value.children, &segment) {
            (Children::Map(entries), Segment::Key(k)) => entries
                .iter()
                .find(|(key, _, _)| key == k)
                .map(|(_, key_line, value)| (*key_line, value)),
            (Children::Seq(items), Segment::Index(i)) => items
                .get(*i)
                .map(|item| (item.referenced.line() as usize, item)),
            _ => None,
        };
        match next {
            Some((l, child)) => {
                line = Some(l);
                node = child;
            }
            None => break,
        }
    }
    line
}

#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `spec.conditions[0].key` → `spec`, `conditions`, 0, `key`.
fn segments(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                out.push(Segment::Key(rest[..open].to_owned()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(Segment::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else {
            out.push(Segment::Key(rest.to_owned()));
        }
    }
    out
}

struct NodeVisitor;

macro_rules! leaf {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<Node, E> {
            Ok(Node::default())
        })*
    };
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    leaf!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128, visit_u128: u128,
          visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node {
            children: Children::Seq(items),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key.value.0, key.referenced.line() as usize, value));
        }
        Ok(Node {
            children: Children::Map(entries),
        })
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// A mapping key as text (any scalar).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key("null".into()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# a comment\napiVersion: budgets.portkey-operator.io/v1alpha1\nkind: UsageLimitPolicy\nmetadata:\n  name: monthly\nspec:\n  creditLimit: -5\n  conditions:\n    - key: metadata._team\n      value: team-a\n    - {key: model, values: [\"@openai/*\"]}\n  groupBy: [{key: api_key}]\n";

    #[test]
    fn lines_of_fields_items_and_flow_style() {
        let root = Node::parse(DOC).unwrap();
        assert_eq!(line_of(&root, "kind"), Some(3));
        assert_eq!(line_of(&root, "metadata.name"), Some(5));
        assert_eq!(line_of(&root, "spec.creditLimit"), Some(7));
        assert_eq!(line_of(&root, "spec.conditions[0].value"), Some(10));
        assert_eq!(line_of(&root, "spec.conditions[1]"), Some(11));
        assert_eq!(line_of(&root, "spec.conditions[1].values[0]"), Some(11));
        assert_eq!(line_of(&root, "spec.groupBy[0].key"), Some(12));
        // Missing: the deepest part that exists.
        assert_eq!(line_of(&root, "spec.workspace"), Some(6));
        assert_eq!(line_of(&root, "spec.conditions[7].key"), Some(8));
        assert_eq!(line_of(&root, ""), None);
    }

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(
            segments("spec.rateLimits[2].value"),
            [
                Segment::Key("spec".into()),
                Segment::Key("rateLimits".into()),
                Segment::Index(2),
                Segment::Key("value".into())
            ]
        );
    }
}
