//! The SLO directory: [`Definitions`] loads every `*.yaml` / `*.yml` file of it, resolves
//! references across files, and on reload keeps the previous good SLOs of a file that fails.
//!
//! Rules (also in `docs/slo.md`, "Definitions"):
//! - Files are read in path order; names starting with `.` are skipped. Subdirectories are not
//!   read. A missing or empty directory means no SLOs and no error.
//! - A file fails when it does not parse, or when one of its documents is rejected while
//!   resolving (a reference to a missing document, a name already used by an earlier file of
//!   the same kind). A failed file's SLOs stay as they were at the previous reload (none if it
//!   never loaded); its error is reported until it is fixed.
//! - Of two SLOs with the same name, the one in the later file (by path) is rejected.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::spec::{self, Document};
use crate::{Slo, SloError};

/// The SLOs defined in one directory, as of the last [`Definitions::reload`].
#[derive(Debug)]
pub struct Definitions {
    dir: PathBuf,
    /// The last documents of each file that parsed.
    docs: BTreeMap<PathBuf, Vec<Document>>,
    in_force: BTreeMap<String, Slo>,
    errors: Vec<String>,
    /// What the directory looked like at the last reload (`None`: unreadable, or never loaded).
    stamps: Option<Vec<Stamp>>,
    loaded: bool,
}

/// A file's identity for change detection: path, size and modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

/// What a reload changed. SLO names are sorted.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// SLOs that are new.
    pub added: Vec<String>,
    /// SLOs whose definition changed.
    pub changed: Vec<String>,
    /// SLOs that are gone (their file or document was removed).
    pub removed: Vec<String>,
    /// Every current problem; the SLOs of the files concerned are the previous good ones.
    pub errors: Vec<SloError>,
}

impl ReloadReport {
    /// Whether the set of SLOs in force changed.
    pub fn any_change(&self) -> bool {
        !(self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty())
    }
}

impl Definitions {
    /// Definitions of `dir`, empty until the first [`Definitions::reload`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Definitions {
            dir: dir.into(),
            docs: BTreeMap::new(),
            in_force: BTreeMap::new(),
            errors: Vec::new(),
            stamps: None,
            loaded: false,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every file again and replaces the SLOs in force (see the module rules for files
    /// that fail). Blocking file IO: call it off the async runtime.
    pub fn reload(&mut self) -> ReloadReport {
        self.loaded = true;
        let mut errors: Vec<(Option<PathBuf>, SloError)> = Vec::new();
        let stamps = match scan(&self.dir) {
            Ok(s) => s,
            Err(source) => {
                // An unreadable directory changes nothing: keep what is in force.
                self.stamps = None;
                let e = SloError::Io { path: self.dir.clone(), source };
                self.errors = vec![e.to_string()];
                return ReloadReport { errors: vec![e], ..Default::default() };
            }
        };
        let mut docs = BTreeMap::new();
        for s in &stamps {
            match read(s) {
                Ok(d) => {
                    docs.insert(s.path.clone(), d);
                }
                Err(e) => {
                    if let Some(old) = self.docs.remove(&s.path) {
                        docs.insert(s.path.clone(), old);
                    }
                    errors.push((Some(s.path.clone()), e));
                }
            }
        }
        let all: Vec<Document> = docs.values().flatten().cloned().collect();
        let resolved = spec::resolve(&all);
        errors.extend(resolved.errors.into_iter().map(|(f, e)| (Some(f), e)));
        let failed: BTreeSet<&PathBuf> = errors.iter().filter_map(|(f, _)| f.as_ref()).collect();

        let mut in_force = BTreeMap::new();
        for slo in resolved.slos {
            if !failed.contains(&slo.source.file) {
                in_force.insert(slo.name.clone(), slo);
            }
        }
        for old in self.in_force.values() {
            if failed.contains(&old.source.file) && !in_force.contains_key(&old.name) {
                in_force.insert(old.name.clone(), old.clone());
            }
        }

        let mut report = ReloadReport::default();
        for (name, slo) in &in_force {
            match self.in_force.get(name) {
                None => report.added.push(name.clone()),
                Some(old) if old != slo => report.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        report.removed = self.in_force.keys().filter(|n| !in_force.contains_key(*n)).cloned().collect();
        self.errors = errors.iter().map(|(_, e)| e.to_string()).collect();
        report.errors = errors.into_iter().map(|(_, e)| e).collect();
        self.in_force = in_force;
        self.docs = docs;
        self.stamps = Some(stamps);
        report
    }

    /// The SLOs in force, sorted by name.
    pub fn slos(&self) -> Vec<Slo> {
        self.in_force.values().cloned().collect()
    }

    /// The current problems (`file:line: field: message`), for the UI and logs.
    pub fn errors(&self) -> Vec<String> {
        self.errors.clone()
    }

    /// Whether the directory's files (names, sizes, modification times) differ from the last
    /// reload: one directory listing and one `stat` per file, cheap enough to poll every few
    /// seconds. True before the first reload.
    pub fn changed_on_disk(&self) -> bool {
        !self.loaded || scan(&self.dir).ok() != self.stamps
    }
}

/// The engine's view: what is in force and the current errors; changes seen by
/// [`Definitions::changed_on_disk`].
impl crate::SloSource for Definitions {
    fn reload(&mut self) -> (Vec<Slo>, Vec<String>) {
        Definitions::reload(self);
        (self.slos(), self.errors())
    }

    fn changed(&self) -> bool {
        self.changed_on_disk()
    }
}

/// The SLO files of `dir` in path order; a missing directory has none.
fn scan(dir: &Path) -> io::Result<Vec<Stamp>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        // Follows symlinks, as mounted ConfigMaps are links.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_file() {
            out.push(Stamp { path, len: meta.len(), modified: meta.modified().ok() });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn read(s: &Stamp) -> Result<Vec<Document>, SloError> {
    let spec_err =
        |message: String| SloError::Spec { file: s.path.clone(), line: 1, field: "document".into(), message };
    if s.len > spec::MAX_FILE_BYTES as u64 {
        return Err(spec_err(format!("file larger than {} KiB", spec::MAX_FILE_BYTES / 1024)));
    }
    let bytes = std::fs::read(&s.path).map_err(|source| SloError::Io { path: s.path.clone(), source })?;
    let text = String::from_utf8(bytes).map_err(|_| spec_err("not UTF-8 text".into()))?;
    spec::parse(&s.path, &text)
}
