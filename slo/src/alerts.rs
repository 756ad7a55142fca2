//! Alert states per (SLO, tier), their transition history, and the durable state file
//! `<data_dir>/slo/alerts.json` (rewritten atomically: temporary file, fsync, rename, fsync of
//! the directory), so states and history survive restarts.
//!
//! States move `Inactive -> Pending` (condition true), `Pending -> Firing` (still true after the
//! tier's `alert_after`, at the earliest at the next evaluation), `Pending -> Inactive`
//! (false again), `Firing -> Resolved` (false), `Resolved -> Inactive` (next evaluation) or
//! `Resolved -> Pending` (true again). Every change is a [`Transition`]; each SLO keeps its
//! newest [`HISTORY_LIMIT`].

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SloError;
use crate::budget::Scale;
use crate::model::Slo;
use crate::status::{Alert, AlertState, TierBurn, Transition};

/// Transitions kept per SLO.
pub const HISTORY_LIMIT: usize = 1000;
const FILE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default)]
struct SloAlerts {
    alerts: Vec<Alert>,
    history: VecDeque<Transition>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    slos: BTreeMap<String, StoredSlo>,
}

/// [`SloAlerts`] as stored: [`Alert`] does not serialize its webhooks (it is also the JSON API's
/// type), the file does. Files written before alerts had webhooks load with none; the next
/// evaluation fills them in from the definitions.
#[derive(Serialize, Deserialize)]
struct StoredSlo {
    alerts: Vec<StoredAlert>,
    history: VecDeque<Transition>,
}

#[derive(Serialize, Deserialize)]
struct StoredAlert {
    #[serde(flatten)]
    alert: Alert,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    webhooks: Vec<String>,
}

impl From<&SloAlerts> for StoredSlo {
    fn from(e: &SloAlerts) -> StoredSlo {
        let alerts = e.alerts.iter().map(|a| StoredAlert { alert: a.clone(), webhooks: a.webhooks.clone() }).collect();
        StoredSlo { alerts, history: e.history.clone() }
    }
}

impl From<StoredSlo> for SloAlerts {
    fn from(s: StoredSlo) -> SloAlerts {
        let alerts = s.alerts.into_iter().map(|a| Alert { webhooks: a.webhooks, ..a.alert }).collect();
        SloAlerts { alerts, history: s.history }
    }
}

/// Every alert and its history, backed by the state file.
#[derive(Debug)]
pub struct AlertBook {
    path: PathBuf,
    slos: BTreeMap<String, SloAlerts>,
    dirty: bool,
}

/// A duration in the largest whole units: `1h`, `5m`, `1d`, `1h30m`, `45s`.
pub fn fmt_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

fn fmt_burn(b: Option<f64>) -> String {
    b.map_or_else(|| "no data".to_string(), |b| format!("{b:.2}x"))
}

impl AlertBook {
    /// Loads the state file at `path` (none yet: no alerts). A file that cannot be parsed is
    /// renamed `<path>.corrupt` and the book starts empty, so a damaged file never stops
    /// evaluation.
    pub fn open(path: &Path) -> Result<AlertBook, SloError> {
        let mut book = AlertBook { path: path.to_path_buf(), slos: BTreeMap::new(), dirty: false };
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(book),
            Err(source) => return Err(SloError::Io { path: path.to_path_buf(), source }),
        };
        match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(f) if f.version == FILE_VERSION => {
                book.slos = f.slos.into_iter().map(|(name, e)| (name, e.into())).collect();
            }
            other => {
                let why = other.map_or_else(|e| e.to_string(), |f| format!("unsupported version {}", f.version));
                let aside = path.with_extension("json.corrupt");
                tracing::warn!(path = %path.display(), reason = %why, "slo alert state unreadable, starting empty");
                fs::rename(path, &aside).map_err(|source| SloError::Io { path: path.to_path_buf(), source })?;
            }
        }
        Ok(book)
    }

    /// Applies one evaluation of `slo` (its tiers' burns, in tier order) at `now_ms`; returns
    /// the transitions it caused. Tiers that no longer exist are retired (see
    /// [`AlertBook::retire`]).
    pub fn evaluate(&mut self, slo: &Slo, burns: &[TierBurn], scale: Scale, now_ms: i64) -> Vec<Transition> {
        let entry = self.slos.entry(slo.name.clone()).or_default();
        let mut out = Vec::new();
        for (tier, burn) in slo.tiers.iter().zip(burns) {
            let i = match entry.alerts.iter().position(|a| a.tier == tier.name) {
                Some(i) => i,
                None => {
                    entry.alerts.push(Alert {
                        slo: slo.name.clone(),
                        tier: tier.name.clone(),
                        severity: tier.severity,
                        state: AlertState::Inactive,
                        since_ms: now_ms,
                        fired_at_ms: None,
                        resolved_at_ms: None,
                        labels: Vec::new(),
                        annotations: Vec::new(),
                        webhooks: Vec::new(),
                    });
                    self.dirty = true;
                    entry.alerts.len() - 1
                }
            };
            let a = &mut entry.alerts[i];
            let labels = labels(slo, &tier.name, tier.severity.as_str());
            let annotations = annotations(slo, burn);
            // Annotations carry the burn rates and change at nearly every evaluation: they are
            // recomputed after a restart, so they alone do not make the file worth rewriting.
            a.annotations = annotations;
            if a.labels != labels || a.severity != tier.severity || a.webhooks != tier.webhooks {
                a.labels = labels;
                a.severity = tier.severity;
                a.webhooks.clone_from(&tier.webhooks);
                self.dirty = true;
            }
            let after_ms = scale.real(tier.alert_after).as_millis() as i64;
            let next = match (a.state, burn.condition) {
                (AlertState::Inactive, false) | (AlertState::Firing, true) => None,
                (AlertState::Inactive | AlertState::Resolved, true) => Some(AlertState::Pending),
                (AlertState::Pending, true) if now_ms > a.since_ms && now_ms - a.since_ms >= after_ms => {
                    Some(AlertState::Firing)
                }
                (AlertState::Pending, true) => None,
                (AlertState::Pending | AlertState::Resolved, false) => Some(AlertState::Inactive),
                (AlertState::Firing, false) => Some(AlertState::Resolved),
            };
            if let Some(to) = next {
                out.push(Transition {
                    at_ms: now_ms,
                    slo: slo.name.clone(),
                    tier: tier.name.clone(),
                    severity: tier.severity,
                    from: a.state,
                    to,
                    long: burn.long,
                    short: burn.short,
                });
                a.state = to;
                a.since_ms = now_ms;
                match to {
                    AlertState::Firing => {
                        a.fired_at_ms = Some(now_ms);
                        a.resolved_at_ms = None;
                    }
                    AlertState::Resolved => a.resolved_at_ms = Some(now_ms),
                    _ => {}
                }
                self.dirty = true;
            }
        }
        let names: Vec<&str> = slo.tiers.iter().map(|t| t.name.as_str()).collect();
        out.extend(retire_alerts(entry, |tier| names.contains(&tier), now_ms));
        push_history(entry, &out);
        if !out.is_empty() {
            self.dirty = true;
        }
        out
    }

    /// Retires the alerts of SLOs not in `known`: a firing one resolves (returned, to notify),
    /// the others are dropped, and an SLO without alerts left is forgotten with its history.
    pub fn retire(&mut self, known: &[&str], now_ms: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        for (name, entry) in self.slos.iter_mut() {
            if !known.contains(&name.as_str()) {
                let t = retire_alerts(entry, |_| false, now_ms);
                push_history(entry, &t);
                out.extend(t);
            }
        }
        let before = self.slos.len();
        self.slos.retain(|name, e| known.contains(&name.as_str()) || !e.alerts.is_empty());
        if !out.is_empty() || self.slos.len() != before {
            self.dirty = true;
        }
        out
    }

    /// Every alert, by SLO then tier order.
    pub fn alerts(&self) -> Vec<Alert> {
        self.slos.values().flat_map(|e| e.alerts.iter().cloned()).collect()
    }

    /// The alerts of one SLO and its history, newest transition first.
    pub fn of(&self, slo: &str) -> (Vec<Alert>, Vec<Transition>) {
        self.slos
            .get(slo)
            .map_or_else(Default::default, |e| (e.alerts.clone(), e.history.iter().rev().cloned().collect()))
    }

    /// Writes the state file when anything changed since the last save.
    pub fn save(&mut self) -> Result<(), SloError> {
        if !self.dirty {
            return Ok(());
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SloError::Io { path, source }
        };
        let file = StateFile {
            version: FILE_VERSION,
            slos: self.slos.iter().map(|(name, e)| (name.clone(), e.into())).collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("alert state serializes");
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        self.dirty = false;
        Ok(())
    }
}

/// Resolves firing alerts whose tier is not kept and drops the other unkept ones (a resolved
/// alert stays until the next evaluation, so it is reported once).
fn retire_alerts(entry: &mut SloAlerts, keep: impl Fn(&str) -> bool, now_ms: i64) -> Vec<Transition> {
    let mut out = Vec::new();
    entry.alerts.retain_mut(|a| {
        if keep(&a.tier) {
            return true;
        }
        if a.state == AlertState::Firing {
            out.push(Transition {
                at_ms: now_ms,
                slo: a.slo.clone(),
                tier: a.tier.clone(),
                severity: a.severity,
                from: AlertState::Firing,
                to: AlertState::Resolved,
                long: None,
                short: None,
            });
            a.state = AlertState::Resolved;
            a.since_ms = now_ms;
            a.resolved_at_ms = Some(now_ms);
            return true;
        }
        a.state == AlertState::Resolved && a.since_ms == now_ms
    });
    out
}

fn push_history(entry: &mut SloAlerts, ts: &[Transition]) {
    entry.history.extend(ts.iter().cloned());
    while entry.history.len() > HISTORY_LIMIT {
        entry.history.pop_front();
    }
}

/// `alertname`, `slo`, `service`, `severity`, `tier`, then the SLO's labels (which cannot
/// override those five).
fn labels(slo: &Slo, tier: &str, severity: &str) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = [
        ("alertname", "SLOBurnRate"),
        ("slo", slo.name.as_str()),
        ("service", slo.service.as_str()),
        ("severity", severity),
        ("tier", tier),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in &slo.labels {
        if !l.iter().any(|(have, _)| have == k) {
            l.push((k.clone(), v.clone()));
        }
    }
    l
}

fn annotations(slo: &Slo, burn: &TierBurn) -> Vec<(String, String)> {
    let long = fmt_duration(Duration::from_secs_f64(burn.long_s));
    let short = fmt_duration(Duration::from_secs_f64(burn.short_s));
    let window = fmt_duration(slo.window.nominal());
    vec![
        (
            "summary".into(),
            format!(
                "{} is burning its error budget at {} (threshold {}x)",
                slo.display_name,
                fmt_burn(burn.long),
                burn.threshold
            ),
        ),
        (
            "description".into(),
            format!(
                "SLO {} ({} {}% over {}): burn rate {} over {long} and {} over {short}, threshold {}x ({} events in {long})",
                slo.name,
                slo.service,
                slo.target * 100.0,
                window,
                fmt_burn(burn.long),
                fmt_burn(burn.short),
                burn.threshold,
                burn.long_events,
            ),
        ),
        ("burn_rate_long".into(), burn.long.map_or_else(String::new, |b| format!("{b}"))),
        ("burn_rate_short".into(), burn.short.map_or_else(String::new, |b| format!("{b}"))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Budgeting, Sli, Source, SpanGood, SpanSelector, Tier, Window};

    fn slo(alert_after: Duration) -> Slo {
        let mut tiers = Tier::workbook(Duration::from_secs(30 * 86400));
        tiers.truncate(2);
        tiers[1].alert_after = alert_after;
        Slo {
            name: "pay".into(),
            display_name: "Payments".into(),
            description: String::new(),
            service: "payment".into(),
            sli: Sli::Spans {
                selector: SpanSelector::default(),
                good: SpanGood { no_error: true, max_duration: None },
            },
            target: 0.999,
            objective_name: String::new(),
            window: Window::Rolling(Duration::from_secs(30 * 86400)),
            budgeting: Budgeting::Occurrences,
            tiers,
            min_events: 0,
            labels: vec![("team".into(), "core".into()), ("slo".into(), "spoof".into())],
            source: Source { file: "x.yaml".into(), line: 1 },
        }
    }

    fn burn(slo: &Slo, i: usize, condition: bool) -> TierBurn {
        let t = &slo.tiers[i];
        TierBurn {
            tier: t.name.clone(),
            severity: t.severity,
            threshold: t.burn_rate,
            long_s: t.long.as_secs_f64(),
            short_s: t.short.as_secs_f64(),
            long: Some(if condition { 20.0 } else { 0.5 }),
            short: Some(if condition { 30.0 } else { 0.5 }),
            long_events: 100,
            condition,
        }
    }

    fn states(book: &AlertBook) -> Vec<AlertState> {
        book.alerts().iter().map(|a| a.state).collect()
    }

    #[test]
    fn pending_firing_resolved_inactive_and_history_survive_reopen() {
        use AlertState::*;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.json");
        // Tier 2 waits 10 min of SLO time = 10 s of real time at scale 60.
        let s = slo(Duration::from_secs(600));
        let scale = Scale::new(60);
        let mut book = AlertBook::open(&path).unwrap();
        let step = |book: &mut AlertBook, at: i64, c: bool| {
            let t = book.evaluate(&s, &[burn(&s, 0, c), burn(&s, 1, c)], scale, at);
            book.save().unwrap();
            t
        };
        assert!(step(&mut book, 0, false).is_empty());
        assert_eq!(states(&book), vec![Inactive, Inactive]);
        assert_eq!(step(&mut book, 1000, true).len(), 2);
        assert_eq!(states(&book), vec![Pending, Pending]);
        // alert_after 0 fires at the next evaluation; the other waits for 10 s.
        step(&mut book, 2000, true);
        assert_eq!(states(&book), vec![Firing, Pending]);
        step(&mut book, 11_000, true);
        assert_eq!(states(&book), vec![Firing, Firing]);
        let a = &book.alerts()[0];
        assert_eq!(a.fired_at_ms, Some(2000));
        assert!(a.labels.contains(&("alertname".into(), "SLOBurnRate".into())));
        assert!(
            a.labels.contains(&("slo".into(), "pay".into())) && !a.labels.contains(&("slo".into(), "spoof".into()))
        );
        assert!(a.labels.contains(&("team".into(), "core".into())));
        let desc = &a.annotations.iter().find(|(k, _)| k == "description").unwrap().1;
        assert!(desc.contains("20.00x over 1h") && desc.contains("30.00x over 5m"), "{desc}");
        // Restart: states and history come back.
        drop(book);
        let mut book = AlertBook::open(&path).unwrap();
        assert_eq!(states(&book), vec![Firing, Firing]);
        let t = step(&mut book, 12_000, false);
        assert_eq!(t.iter().map(|t| (t.from, t.to)).collect::<Vec<_>>(), vec![(Firing, Resolved); 2]);
        assert_eq!(book.alerts()[0].resolved_at_ms, Some(12_000));
        step(&mut book, 13_000, false);
        assert_eq!(states(&book), vec![Inactive, Inactive]);
        let (_, history) = book.of("pay");
        assert_eq!(history.len(), 8);
        assert_eq!((history[0].from, history[0].to), (Resolved, Inactive), "newest first");
        assert_eq!(history.last().unwrap().at_ms, 1000);
    }

    #[test]
    fn pending_that_clears_goes_back_to_inactive_and_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = slo(Duration::ZERO);
        let mut book = AlertBook::open(&dir.path().join("a.json")).unwrap();
        for i in 0..1200 {
            let c = i % 2 == 0;
            book.evaluate(&s, &[burn(&s, 0, c), burn(&s, 1, false)], Scale::new(1), i);
        }
        let (alerts, history) = book.of("pay");
        assert_eq!(alerts[0].state, AlertState::Inactive);
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert!(history.iter().all(|t| t.to != AlertState::Firing));
    }

    #[test]
    fn removed_slos_and_tiers_resolve_their_firing_alerts_then_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = slo(Duration::ZERO);
        let mut book = AlertBook::open(&dir.path().join("a.json")).unwrap();
        for at in [1, 2] {
            book.evaluate(&s, &[burn(&s, 0, true), burn(&s, 1, false)], Scale::new(1), at);
        }
        // The first tier goes away from the definition.
        let mut fewer = s.clone();
        fewer.tiers.remove(0);
        let t = book.evaluate(&fewer, &[burn(&s, 1, false)], Scale::new(1), 3);
        assert_eq!((t[0].tier.as_str(), t[0].to), ("page-fast", AlertState::Resolved));
        assert_eq!(book.alerts().len(), 2, "reported once as resolved");
        book.evaluate(&fewer, &[burn(&s, 1, false)], Scale::new(1), 4);
        assert_eq!(book.alerts().len(), 1);
        // The whole SLO goes away.
        assert!(book.retire(&[], 5).is_empty());
        assert!(book.alerts().is_empty());
        assert!(book.of("pay").1.is_empty());
    }

    #[test]
    fn the_file_is_rewritten_on_state_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.json");
        let s = slo(Duration::ZERO);
        let mut book = AlertBook::open(&path).unwrap();
        book.evaluate(&s, &[burn(&s, 0, false), burn(&s, 1, false)], Scale::new(1), 1);
        book.save().unwrap();
        fs::remove_file(&path).unwrap();
        // Other burn rates, same states: nothing to write.
        let mut b = burn(&s, 0, false);
        b.long = Some(0.7);
        book.evaluate(&s, &[b, burn(&s, 1, false)], Scale::new(1), 2);
        book.save().unwrap();
        assert!(!path.exists());
        book.evaluate(&s, &[burn(&s, 0, true), burn(&s, 1, false)], Scale::new(1), 3);
        book.save().unwrap();
        assert!(path.exists());
    }

    #[test]
    fn alerts_carry_their_tiers_webhooks_in_the_file_but_not_in_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.json");
        let mut s = slo(Duration::ZERO);
        s.tiers[0].webhooks = vec!["http://pager.internal/hook?token=secret".into()];
        let mut book = AlertBook::open(&path).unwrap();
        book.evaluate(&s, &[burn(&s, 0, true), burn(&s, 1, false)], Scale::new(1), 1);
        book.save().unwrap();
        let hooks: Vec<Vec<String>> = book.alerts().into_iter().map(|a| a.webhooks).collect();
        assert_eq!(hooks, vec![s.tiers[0].webhooks.clone(), vec![]]);
        let api = serde_json::to_string(&book.alerts()).unwrap();
        assert!(!api.contains("secret"), "{api}");
        assert!(fs::read_to_string(&path).unwrap().contains("token=secret"));
        // After a restart a removed SLO's firing alert resolves: its webhooks are still known.
        let mut book = AlertBook::open(&path).unwrap();
        assert_eq!(book.alerts()[0].webhooks, s.tiers[0].webhooks);
        book.evaluate(&s, &[burn(&s, 0, true), burn(&s, 1, false)], Scale::new(1), 2);
        book.retire(&[], 3);
        assert_eq!(book.alerts()[0].state, AlertState::Resolved);
        assert_eq!(book.alerts()[0].webhooks, s.tiers[0].webhooks);
        // A changed policy target is picked up (and saved) at the next evaluation.
        s.tiers[0].webhooks = vec!["http://other/hook".into()];
        book.evaluate(&s, &[burn(&s, 0, false), burn(&s, 1, false)], Scale::new(1), 4);
        assert_eq!(book.alerts()[0].webhooks, s.tiers[0].webhooks);
        assert!(book.dirty);
    }

    #[test]
    fn a_state_file_from_before_webhooks_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.json");
        let old = r#"{"version":1,"slos":{"pay":{"alerts":[{"slo":"pay","tier":"page-fast","severity":"page",
            "state":"firing","since_ms":5,"fired_at_ms":5,"resolved_at_ms":null,
            "labels":[["slo","pay"]],"annotations":[]}],"history":[]}}}"#;
        fs::write(&path, old).unwrap();
        let book = AlertBook::open(&path).unwrap();
        let a = &book.alerts()[0];
        assert_eq!((a.state, a.fired_at_ms, a.webhooks.len()), (AlertState::Firing, Some(5), 0));
        assert!(!dir.path().join("alerts.json.corrupt").exists());
    }

    #[test]
    fn a_corrupt_state_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.json");
        fs::write(&path, b"{not json").unwrap();
        let book = AlertBook::open(&path).unwrap();
        assert!(book.alerts().is_empty());
        assert!(dir.path().join("alerts.json.corrupt").exists());
    }

    #[test]
    fn durations_print_in_whole_units() {
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(fmt_duration(Duration::from_secs(3 * 86400)), "3d");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
    }
}
