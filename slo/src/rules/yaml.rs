//! Building YAML trees and printing them with saphyr's emitter (which quotes what needs it).

use std::borrow::Cow;

use saphyr::{Mapping, Scalar, Yaml, YamlEmitter};

pub(crate) type Node = Yaml<'static>;

pub(crate) fn text(v: impl Into<String>) -> Node {
    Yaml::Value(Scalar::String(Cow::Owned(v.into())))
}

pub(crate) fn seq(items: Vec<Node>) -> Node {
    Yaml::Sequence(items)
}

pub(crate) fn map(pairs: Vec<(&str, Node)>) -> Node {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(text(k), v);
    }
    Yaml::Mapping(m)
}

/// The document without its `---` line, ending with a newline; multi-line strings as literal
/// blocks.
pub(crate) fn print(doc: &Node) -> String {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline(true);
    // Writing into a String cannot fail, and every node here is a string, sequence or mapping.
    emitter.dump(doc).expect("emitting YAML into a string");
    let mut out = out.strip_prefix("---\n").map(str::to_string).unwrap_or(out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}
