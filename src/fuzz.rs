//! The fuzz target of the configuration file (`docs/fuzzing.md`), which panics when a property
//! is broken. Compiled for tests and with the `fuzzing` feature (the cargo-fuzz crate in
//! `fuzz/libfuzzer/`); not part of the crate's API.

use crate::Config;

/// A config file: parsed or refused with a message; a parsed one validates or is refused with
/// a message, and prints as TOML that parses back to the same configuration.
pub fn config(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let config = match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    if let Err(e) = config.validate() {
        assert!(!e.to_string().is_empty());
    }
    let printed = match toml::to_string(&config) {
        Ok(p) => p,
        // TOML cannot print every value it reads (a float as a duration, say): not a bug here.
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let again = Config::from_toml(&printed).unwrap_or_else(|e| panic!("printed config does not parse: {e}\n{printed}"));
    assert_eq!(again, config, "printed as\n{printed}");
}

#[cfg(test)]
mod tests {
    use obsbox_fuzz::Replay;

    use super::*;

    #[test]
    fn fuzz_config() {
        Replay::new("config").dict("config").run(config);
    }
}
