//! The fuzz target of OpenSLO definitions (`docs/fuzzing.md`), which panics when a property is
//! broken. Compiled for tests and with the `fuzzing` feature (the cargo-fuzz crate in
//! `fuzz/libfuzzer/`); not part of the crate's API.

use std::path::Path;

use crate::SloError;
use crate::spec::parse_slos;

/// A definitions file: parsed into SLOs or refused with a spec error naming a line and a field;
/// parsed SLOs yield Prometheus rules and their promtool fixtures without a panic.
pub fn openslo(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    match parse_slos(Path::new("fuzz.yaml"), &text) {
        Ok(slos) => {
            let rules = crate::prometheus_rules(&slos);
            assert!(rules.starts_with('#'), "{rules}");
            if let Err(e) = crate::promtool_tests(&slos, "rules.yaml") {
                assert!(!e.to_string().is_empty());
            }
        }
        Err(SloError::Spec { line, field, message, .. }) => {
            assert!(line >= 1, "line {line}: {message}");
            assert!(!field.is_empty() && !message.is_empty());
        }
        Err(other) => panic!("not a spec error: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use obsbox_fuzz::Replay;

    use super::*;

    #[test]
    fn fuzz_openslo() {
        Replay::new("openslo").dict("openslo").run(openslo);
    }
}
