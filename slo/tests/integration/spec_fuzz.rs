//! The parser never panics: random bytes, random YAML-ish text, and fixtures mutated by
//! deleting, duplicating or swapping lines and bytes all yield `Ok` or a `SloError::Spec`.

use std::path::{Path, PathBuf};

use obsbox_slo::SloError;
use obsbox_slo::spec::parse_slos;
use proptest::prelude::*;

fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in [root.join("tests/fixtures/good"), root.join("tests/fixtures/bad"), root.join("../slos")] {
        files.extend(std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()));
    }
    files.sort();
    files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect()
}

fn check(text: &str) {
    match parse_slos(Path::new("fuzz.yaml"), text) {
        Ok(_) => {}
        Err(SloError::Spec { line, field, .. }) => {
            assert!(line >= 1, "line {line} for {text:?}");
            assert!(!field.is_empty());
        }
        Err(other) => panic!("unexpected error kind {other:?}"),
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    DeleteByte(usize),
    InsertByte(usize, u8),
    ReplaceByte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<usize>().prop_map(Mutation::DeleteByte),
        (any::<usize>(), prop::sample::select(b" :-[]{}\"'#&*!|>\n\t0aZ.%@".to_vec()))
            .prop_map(|(i, b)| Mutation::InsertByte(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::ReplaceByte(i, b)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in muts {
        let s = String::from_utf8_lossy(&bytes).into_owned();
        let mut lines: Vec<&str> = s.lines().collect();
        let n = lines.len().max(1);
        let len = bytes.len().max(1);
        match *m {
            Mutation::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
                bytes = lines.join("\n").into_bytes();
            }
            Mutation::DuplicateLine(i) if !lines.is_empty() => {
                let l = lines[i % n];
                lines.insert(i % n, l);
                bytes = lines.join("\n").into_bytes();
            }
            Mutation::SwapLines(a, b) if !lines.is_empty() => {
                lines.swap(a % n, b % n);
                bytes = lines.join("\n").into_bytes();
            }
            Mutation::DeleteByte(i) if !bytes.is_empty() => {
                bytes.remove(i % len);
            }
            Mutation::InsertByte(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::ReplaceByte(i, b) if !bytes.is_empty() => bytes[i % len] = b,
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-zA-Z0-9:{}\\[\\], \\-\\n'\"#.]{0,300}") {
        check(&text);
    }

    #[test]
    fn mutated_fixtures_never_panic(i in any::<usize>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let corpus = corpus();
        check(&apply(&corpus[i % corpus.len()], &muts));
    }
}

#[test]
fn hostile_inputs_are_refused_not_fatal() {
    // Billion laughs: alias expansion is bounded by the YAML loader.
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        laughs
            .push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    check(&laughs);
    // Deep nesting.
    check(&"[".repeat(100_000));
    check(&"- ".repeat(10_000));
    // The deepest nesting the line limits let through: indentation, then compact sequences,
    // then flow collections over several lines.
    let mut deep = String::new();
    for i in 0..250 {
        deep.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
    }
    deep.push_str(&format!("{}{}{}\n", " ".repeat(250), "- ".repeat(60), "[".repeat(60)));
    for _ in 0..4 {
        deep.push_str(&format!("{}\n", "[".repeat(60)));
    }
    check(&deep);
    // Too large.
    let big = format!("# {}\n", "x".repeat(2 << 20));
    let e = parse_slos(Path::new("big.yaml"), &big).unwrap_err();
    assert!(e.to_string().contains("file larger than"), "{e}");
    // Extreme numbers.
    for t in ["1e400", "-0.0", ".nan", ".inf", "99999999999999999999999"] {
        check(&format!(
            "apiVersion: openslo/v1\nkind: SLO\nmetadata: {{name: x}}\nspec:\n  service: s\n  indicatorRef: i\n  \
             timeWindow: [{{duration: 4294967295w, isRolling: true}}]\n  budgetingMethod: Occurrences\n  objectives: [{{target: {t}}}]\n"
        ));
    }
}
