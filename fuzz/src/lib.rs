//! The `cargo test` side of obsbox's fuzz targets: each target's committed corpus and crash
//! regressions are replayed, then mutations of them are tried for a bounded time.
//!
//! # Where things are
//! - `fuzz/corpus/<target>/`: seed inputs, one file each (raw bytes: protobuf, JSON, query text).
//! - `fuzz/regressions/<target>/`: inputs that once failed; each also has a named test next to
//!   its target.
//! - `fuzz/dict/<name>.dict`: tokens in libFuzzer's dictionary format, used by the mutations here
//!   and by the coverage-guided campaign (`-dict=`).
//! - `fuzz/libfuzzer/`: the cargo-fuzz crate of the campaign (its own workspace, never built by
//!   `cargo test`); `docs/fuzzing.md` has the commands.
//! - The targets themselves live in the crates they test (`<crate>/src/fuzz.rs`), behind
//!   `cfg(test)` or the crate's `fuzzing` feature.
//!
//! A target is a function of the input bytes that panics when a property is broken (a panic in
//! the code under test, a 5xx answer to bad input, a failed round trip). [`Replay::run`] also
//! fails an input that takes longer than the slow-input limit. An input that aborts the process
//! (a stack overflow) is left in `$TMPDIR/obsbox-fuzz-<target>-current`.
//!
//! Environment: `OBSBOX_FUZZ_SECS` (mutation time per target, default 2 s; `0` replays the
//! corpus only), `OBSBOX_FUZZ_SEED` (the mutation seed, printed by every run),
//! `OBSBOX_FUZZ_SLOW_MS` (the slow-input limit, default 5000 ms: unoptimised test builds).
#![warn(missing_docs)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{AssertUnwindSafe, RefUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest mutated input; longer seeds are replayed but not grown.
const MAX_LEN: usize = 64 * 1024;

/// `fuzz/`, where the corpora, regressions and dictionaries are.
fn fuzz_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bytes of `fuzz/regressions/<target>/<file>`, for a named regression test.
///
/// Panics when the file is missing: a regression test without its input would pass vacuously.
pub fn regression(target: &str, file: &str) -> Vec<u8> {
    let path = fuzz_dir().join("regressions").join(target).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read regression input {}: {e}", path.display()))
}

/// The replay of one target: its corpus, its regressions, then mutations of both.
#[derive(Debug, Clone)]
pub struct Replay {
    name: &'static str,
    dict: Option<&'static str>,
    budget: Duration,
    slow: Duration,
    seed: u64,
}

impl Replay {
    /// The replay of target `name` (`fuzz/corpus/<name>/`, `fuzz/regressions/<name>/`), with the
    /// time budget, seed and slow-input limit from the environment.
    pub fn new(name: &'static str) -> Replay {
        let secs = env_parse::<f64>("OBSBOX_FUZZ_SECS").unwrap_or(2.0).clamp(0.0, 86_400.0);
        let seed = env_parse::<u64>("OBSBOX_FUZZ_SEED").unwrap_or_else(|| {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
        });
        let slow = Duration::from_millis(env_parse("OBSBOX_FUZZ_SLOW_MS").unwrap_or(5000));
        Replay { name, dict: None, budget: Duration::from_secs_f64(secs), slow, seed }
    }

    /// Mutations also insert the tokens of `fuzz/dict/<dict>.dict`.
    pub fn dict(mut self, dict: &'static str) -> Replay {
        self.dict = Some(dict);
        self
    }

    /// Runs `target` on every corpus and regression input, then on mutations of them until the
    /// time budget is spent. Panics (failing the test) on the first input that makes `target`
    /// panic or that takes longer than the slow-input limit, after saving it to a temporary
    /// file whose path the message gives.
    pub fn run(self, target: impl Fn(&[u8]) + RefUnwindSafe) {
        let mut seeds = read_dir_files(&fuzz_dir().join("corpus").join(self.name));
        let corpus_len = seeds.len();
        seeds.extend(read_dir_files(&fuzz_dir().join("regressions").join(self.name)));
        assert!(corpus_len > 0, "fuzz target {}: fuzz/corpus/{}/ has no seed inputs", self.name, self.name);
        for seed in &seeds {
            self.one(&target, seed, "corpus");
        }
        let tokens = match self.dict {
            Some(d) => read_dict(&fuzz_dir().join("dict").join(format!("{d}.dict"))),
            None => Vec::new(),
        };
        let mut rng = Rng(self.seed | 1);
        let started = Instant::now();
        let mut runs = 0u64;
        while started.elapsed() < self.budget {
            let base = &seeds[rng.below(seeds.len())];
            let mut input = base.clone();
            for _ in 0..=rng.below(4) {
                mutate(&mut input, &mut rng, &tokens, &seeds);
            }
            input.truncate(MAX_LEN);
            self.one(&target, &input, "mutation");
            runs += 1;
        }
        eprintln!(
            "fuzz target {}: {} seed inputs, {runs} mutations in {:.1?} (OBSBOX_FUZZ_SEED={})",
            self.name,
            seeds.len(),
            started.elapsed(),
            self.seed
        );
    }

    fn one(&self, target: &(impl Fn(&[u8]) + RefUnwindSafe), input: &[u8], kind: &str) {
        // A stack overflow aborts the process before any message: the input is already here.
        let _ = std::fs::write(self.current_path(), input);
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| target(input)));
        let took = started.elapsed();
        let problem = match result {
            Err(panic) => Some(panic_message(&panic)),
            Ok(()) if took > self.slow => Some(format!("took {took:.1?}, more than the limit of {:?}", self.slow)),
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            let saved = self.save(input);
            panic!(
                "fuzz target {} failed on a {kind} input ({} bytes, saved at {saved}, OBSBOX_FUZZ_SEED={}): {problem}\n\
                 input: {:?}\n\
                 fix it, then keep the input as fuzz/regressions/{}/<name> with a named test",
                self.name,
                input.len(),
                self.seed,
                String::from_utf8_lossy(&input[..input.len().min(2048)]),
                self.name,
            );
        }
    }

    /// Where the input being tried is written before each run.
    fn current_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("obsbox-fuzz-{}-current", self.name))
    }

    fn save(&self, input: &[u8]) -> String {
        let mut h = DefaultHasher::new();
        input.hash(&mut h);
        let path = std::env::temp_dir().join(format!("obsbox-fuzz-{}-{:016x}", self.name, h.finish()));
        match std::fs::write(&path, input) {
            Ok(()) => path.display().to_string(),
            Err(e) => format!("<not saved: {e}>"),
        }
    }
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// The files of `dir`, sorted by name; none when it does not exist.
fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))).collect()
}

/// The tokens of a libFuzzer dictionary: one `name="value"` or `"value"` per line, `#` comments,
/// escapes `\\`, `\"` and `\xNN`.
fn read_dict(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let quoted = line.find('"').map(|i| &line[i..]).filter(|q| q.len() >= 2 && q.ends_with('"'));
        let Some(quoted) = quoted else { panic!("{}:{}: expected a quoted token", path.display(), n + 1) };
        out.push(unescape(&quoted[1..quoted.len() - 1]));
    }
    out
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let hex = (b[i + 1] == b'x' && i + 3 < b.len())
                .then(|| std::str::from_utf8(&b[i + 2..i + 4]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
                .flatten();
            if let Some(v) = hex {
                out.push(v);
                i += 4;
                continue;
            }
            out.push(b[i + 1]);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// xorshift64*: deterministic for a seed, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Bytes that often sit on a parser's edges.
const INTERESTING: &[u8] = b"\0\x01\x7f\x80\xff\"\\{}[]()<>,:;=!~|-+*/^%#.`'\n\t 09aeEzZ";

/// Protobuf varints and numbers at type edges, as they appear on the wire or in text.
const NUMBERS: &[&[u8]] = &[
    b"\xff\xff\xff\xff\x0f",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    b"0",
    b"-1",
    b"1e309",
    b"-0",
    b"NaN",
    b"Inf",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"4294967296",
    b"1e-400",
    b"0x10",
];

/// Applies one random mutation to `input`.
fn mutate(input: &mut Vec<u8>, rng: &mut Rng, tokens: &[Vec<u8>], seeds: &[Vec<u8>]) {
    let len = input.len();
    let at = rng.below(len + 1);
    match rng.below(11) {
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        // Replace a byte by an interesting one.
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        // Insert a random byte.
        2 => input.insert(at, rng.next() as u8),
        // Delete a range.
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            input.drain(start..end);
        }
        // Insert a dictionary token.
        4 | 5 if !tokens.is_empty() => {
            let t = &tokens[rng.below(tokens.len())];
            input.splice(at..at, t.iter().copied());
        }
        // Insert a number at a type edge.
        6 => {
            let n = NUMBERS[rng.below(NUMBERS.len())];
            input.splice(at..at, n.iter().copied());
        }
        // Copy a chunk elsewhere.
        7 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64)).min(len);
            let chunk = input[start..end].to_vec();
            input.splice(at..at, chunk);
        }
        // Repeat a chunk many times: deep nesting, long runs.
        8 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(4)).min(len);
            let chunk = input[start..end].to_vec();
            let most = if rng.below(4) == 0 { 2000 } else { 40 };
            let times = 1 + rng.below(most);
            let repeated: Vec<u8> = chunk.iter().copied().cycle().take(chunk.len() * times).collect();
            input.splice(at..at, repeated);
        }
        // Splice in a piece of another seed.
        9 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(256)).min(other.len());
                input.splice(at..at, other[start..end].iter().copied());
            }
        }
        // Truncate.
        10 if len > 0 => input.truncate(rng.below(len)),
        _ => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_unescape_like_libfuzzer() {
        assert_eq!(unescape(r#"a\"b\\c\x41"#), b"a\"b\\cA");
        let dir = std::env::temp_dir().join(format!("obsbox-fuzz-dict-{}", std::process::id()));
        std::fs::write(&dir, "# comment\nkw_sum=\"sum\"\n\"\\x00\"\n\n").unwrap();
        assert_eq!(read_dict(&dir), vec![b"sum".to_vec(), vec![0]]);
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn mutations_stay_bounded_and_vary() {
        let seeds = vec![b"sum(rate(x[5m]))".to_vec()];
        let mut rng = Rng(42);
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..2000 {
            let mut input = seeds[0].clone();
            mutate(&mut input, &mut rng, &[b"by".to_vec()], &seeds);
            assert!(input.len() <= seeds[0].len() + 8000);
            distinct.insert(input);
        }
        assert!(distinct.len() > 1000, "{} distinct mutations", distinct.len());
    }

    #[test]
    fn a_failing_target_names_the_saved_input() {
        let replay =
            Replay { name: "selftest", dict: None, budget: Duration::ZERO, slow: Duration::from_secs(60), seed: 1 };
        let err = catch_unwind(|| replay.one(&|b: &[u8]| assert!(b != b"boom", "found it"), b"boom", "corpus"))
            .expect_err("the target fails");
        let msg = panic_message(&err);
        assert!(msg.contains("found it") && msg.contains("obsbox-fuzz-selftest-"), "{msg}");
    }
}
