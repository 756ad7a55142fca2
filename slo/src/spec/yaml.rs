//! A strict reader over saphyr's located YAML tree: every accessor knows the field path and the
//! line of the field it reads, so that every error names both, and mappings reject keys they do
//! not expect.

use std::path::Path;

use saphyr::{MarkedYaml, Scalar, YamlData};

use crate::SloError;

/// The file being read, for errors.
#[derive(Clone, Copy)]
pub(super) struct Cx<'f> {
    pub file: &'f Path,
}

impl Cx<'_> {
    /// An error at `line` about `field` (the root of a document is `document`).
    pub fn err(&self, line: usize, field: &str, message: impl Into<String>) -> SloError {
        let field = if field.is_empty() { "document" } else { field };
        SloError::Spec { file: self.file.to_path_buf(), line, field: field.to_owned(), message: message.into() }
    }
}

/// One value and where it is: the line of its key (or of the item, in a sequence) and its path.
#[derive(Clone)]
pub(super) struct Field<'y, 'i> {
    node: &'y MarkedYaml<'i>,
    pub line: usize,
    pub path: String,
}

/// A mapping whose keys were checked against the expected ones.
pub(super) struct Map<'y, 'i> {
    entries: Vec<(String, Field<'y, 'i>)>,
    pub line: usize,
    pub path: String,
}

/// `parent.child`, or `child` at the root.
pub(super) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() { child.to_owned() } else { format!("{parent}.{child}") }
}

fn describe(node: &MarkedYaml<'_>) -> &'static str {
    match &node.data {
        YamlData::Value(Scalar::Null) => "nothing",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Tagged(..) => "a tagged value",
        YamlData::Alias(_) | YamlData::BadValue => "an unreadable value",
    }
}

impl<'y, 'i> Field<'y, 'i> {
    /// The root of a document.
    pub fn root(node: &'y MarkedYaml<'i>) -> Self {
        Field { node, line: node.span.start.line().max(1), path: String::new() }
    }

    /// Whether the value is YAML null (`~`, `null` or nothing).
    pub fn is_null(&self) -> bool {
        matches!(self.node.data, YamlData::Value(Scalar::Null))
    }

    fn expected(&self, cx: Cx<'_>, what: &str) -> SloError {
        cx.err(self.line, &self.path, format!("expected {what}, found {}", describe(self.node)))
    }

    /// A mapping with only the `allowed` keys (an unknown key is an error naming it).
    pub fn map(&self, cx: Cx<'_>, allowed: &[&str]) -> Result<Map<'y, 'i>, SloError> {
        let YamlData::Mapping(m) = &self.node.data else {
            return Err(self.expected(cx, "a mapping"));
        };
        let mut entries = Vec::with_capacity(m.len());
        for (k, v) in m {
            let line = k.span.start.line().max(1);
            let key = match &k.data {
                YamlData::Value(Scalar::String(s)) => s.to_string(),
                _ => return Err(cx.err(line, &self.path, format!("keys must be strings, found {}", describe(k)))),
            };
            let path = join(&self.path, &key);
            if !allowed.contains(&key.as_str()) {
                let expected = if allowed.is_empty() { "no fields here".to_owned() } else { allowed.join(", ") };
                return Err(cx.err(line, &path, format!("unknown field `{key}` (expected: {expected})")));
            }
            entries.push((key, Field { node: v, line, path }));
        }
        Ok(Map { entries, line: self.line, path: self.path.clone() })
    }

    /// A mapping with any keys (for labels, annotations, attributes).
    pub fn open_map(&self, cx: Cx<'_>) -> Result<Map<'y, 'i>, SloError> {
        let YamlData::Mapping(m) = &self.node.data else {
            return Err(self.expected(cx, "a mapping"));
        };
        let mut entries = Vec::with_capacity(m.len());
        for (k, v) in m {
            let line = k.span.start.line().max(1);
            let key = match &k.data {
                YamlData::Value(Scalar::String(s)) => s.to_string(),
                YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                _ => return Err(cx.err(line, &self.path, format!("keys must be strings, found {}", describe(k)))),
            };
            let path = join(&self.path, &key);
            entries.push((key, Field { node: v, line, path }));
        }
        Ok(Map { entries, line: self.line, path: self.path.clone() })
    }

    /// The items of a sequence, each with its own line and `path[i]`.
    pub fn seq(&self, cx: Cx<'_>) -> Result<Vec<Field<'y, 'i>>, SloError> {
        let YamlData::Sequence(items) = &self.node.data else {
            return Err(self.expected(cx, "a list"));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, node)| Field {
                node,
                line: node.span.start.line().max(self.line),
                path: format!("{}[{i}]", self.path),
            })
            .collect())
    }

    /// A string (quoted or plain; numbers and booleans are not strings).
    pub fn str(&self, cx: Cx<'_>) -> Result<&'y str, SloError> {
        match &self.node.data {
            YamlData::Value(Scalar::String(s)) => Ok(s.as_ref()),
            _ => Err(self.expected(cx, "a string")),
        }
    }

    /// The text of any scalar but null (`100` and `"100"` alike), for annotation and label values.
    pub fn scalar_text(&self, cx: Cx<'_>) -> Result<String, SloError> {
        match &self.node.data {
            YamlData::Value(Scalar::String(s)) => Ok(s.to_string()),
            YamlData::Value(Scalar::Integer(i)) => Ok(i.to_string()),
            YamlData::Value(Scalar::FloatingPoint(f)) => Ok(f.to_string()),
            YamlData::Value(Scalar::Boolean(b)) => Ok(b.to_string()),
            _ => Err(self.expected(cx, "a string")),
        }
    }

    /// A number (integers are numbers too).
    pub fn f64(&self, cx: Cx<'_>) -> Result<f64, SloError> {
        match &self.node.data {
            YamlData::Value(Scalar::FloatingPoint(f)) => Ok(f.into_inner()),
            YamlData::Value(Scalar::Integer(i)) => Ok(*i as f64),
            _ => Err(self.expected(cx, "a number")),
        }
    }

    /// A boolean.
    pub fn bool(&self, cx: Cx<'_>) -> Result<bool, SloError> {
        match &self.node.data {
            YamlData::Value(Scalar::Boolean(b)) => Ok(*b),
            _ => Err(self.expected(cx, "true or false")),
        }
    }

    /// A scalar as typed in YAML: string, integer, number or boolean.
    pub fn typed_scalar(&self, cx: Cx<'_>) -> Result<obsbox_storage::AttrValue, SloError> {
        use obsbox_storage::AttrValue;
        match &self.node.data {
            YamlData::Value(Scalar::String(s)) => Ok(AttrValue::Str(s.to_string())),
            YamlData::Value(Scalar::Integer(i)) => Ok(AttrValue::Int(*i)),
            YamlData::Value(Scalar::FloatingPoint(f)) => Ok(AttrValue::Float(f.into_inner())),
            YamlData::Value(Scalar::Boolean(b)) => Ok(AttrValue::Bool(*b)),
            _ => Err(self.expected(cx, "a string, number or boolean")),
        }
    }

    /// An error about this field.
    pub fn err(&self, cx: Cx<'_>, message: impl Into<String>) -> SloError {
        cx.err(self.line, &self.path, message)
    }
}

impl<'y, 'i> Map<'y, 'i> {
    /// The value of `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<&Field<'y, 'i>> {
        self.entries.iter().find(|(k, f)| k == key && !f.is_null()).map(|(_, f)| f)
    }

    /// The value of `key`; its absence is an error naming it (at the mapping's line).
    pub fn req(&self, cx: Cx<'_>, key: &str) -> Result<&Field<'y, 'i>, SloError> {
        self.get(key).ok_or_else(|| cx.err(self.line, &join(&self.path, key), format!("missing field `{key}`")))
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Field<'y, 'i>)> {
        self.entries.iter().map(|(k, f)| (k.as_str(), f))
    }

    /// The keys present (with a non-null value) among `keys`.
    pub fn present<'k>(&self, keys: &[&'k str]) -> Vec<&'k str> {
        keys.iter().copied().filter(|k| self.get(k).is_some()).collect()
    }

    /// An error about the mapping itself.
    pub fn err(&self, cx: Cx<'_>, message: impl Into<String>) -> SloError {
        cx.err(self.line, &self.path, message)
    }
}
