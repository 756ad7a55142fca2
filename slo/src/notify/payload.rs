//! The two wire formats, built from alert snapshots without I/O: the Alertmanager webhook message
//! (version 4, as Alertmanager's `notify/webhook` sends it) and the alert list of Alertmanager's
//! `POST /api/v2/alerts` (as Prometheus sends it).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::status::{Alert, AlertState, Transition};

/// Go's zero `time.Time` in RFC 3339: the `endsAt` of a firing alert in webhook messages.
pub(crate) const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The `receiver` of webhook messages (Alertmanager puts the name of its receiver there).
pub(crate) const RECEIVER: &str = "obsbox";

type Labels = BTreeMap<String, String>;

/// One webhook POST body: every alert of one SLO that is firing or just resolved.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookMessage {
    version: &'static str,
    group_key: String,
    truncated_alerts: u64,
    status: &'static str,
    receiver: &'static str,
    group_labels: Labels,
    common_labels: Labels,
    common_annotations: Labels,
    #[serde(rename = "externalURL")]
    external_url: String,
    alerts: Vec<WebhookAlert>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookAlert {
    status: &'static str,
    labels: Labels,
    annotations: Labels,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
    fingerprint: String,
}

/// One element of the `POST /api/v2/alerts` body (Alertmanager's `postableAlert`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PostableAlert {
    labels: Labels,
    annotations: Labels,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
}

/// The webhook messages of one evaluation for one receiver, which gets the alerts `keep` accepts:
/// one message per SLO that has a transition to `Firing` or to `Resolved` in `transitions` of an
/// alert of `alerts` that `keep` accepts (in order of first such transition), carrying that SLO's
/// accepted alerts that are firing or resolved. So a receiver hears of an SLO only when one of
/// its own alerts changed, and then of all its alerts of that SLO.
pub(crate) fn webhook_messages(
    alerts: &[Alert],
    transitions: &[Transition],
    external_url: &str,
    keep: impl Fn(&Alert) -> bool,
) -> Vec<WebhookMessage> {
    let mut slos: Vec<&str> = Vec::new();
    for t in transitions {
        if matches!(t.to, AlertState::Firing | AlertState::Resolved)
            && !slos.contains(&t.slo.as_str())
            && alerts.iter().any(|a| a.slo == t.slo && a.tier == t.tier && keep(a))
        {
            slos.push(&t.slo);
        }
    }
    slos.into_iter()
        .filter_map(|slo| {
            let group: Vec<&Alert> =
                alerts.iter().filter(|a| a.slo == slo && status_of(a.state).is_some() && keep(a)).collect();
            (!group.is_empty()).then(|| webhook_message(slo, &group, external_url))
        })
        .collect()
}

fn webhook_message(slo: &str, group: &[&Alert], external_url: &str) -> WebhookMessage {
    let alerts: Vec<WebhookAlert> = group
        .iter()
        .map(|a| {
            let labels = label_map(&a.labels);
            let fingerprint = fingerprint(&labels);
            WebhookAlert {
                status: status_of(a.state).unwrap_or("resolved"),
                labels,
                annotations: label_map(&a.annotations),
                starts_at: rfc3339(starts_at(a)),
                ends_at: match a.state {
                    AlertState::Firing => ZERO_TIME.to_owned(),
                    _ => rfc3339(a.resolved_at_ms.unwrap_or(a.since_ms)),
                },
                generator_url: generator_url(external_url, &a.slo),
                fingerprint,
            }
        })
        .collect();
    let status = if alerts.iter().any(|a| a.status == "firing") { "firing" } else { "resolved" };
    let group_labels = Labels::from([("slo".to_owned(), slo.to_owned())]);
    WebhookMessage {
        version: "4",
        group_key: format!("{{}}:{}", label_set_string(&group_labels)),
        truncated_alerts: 0,
        status,
        receiver: RECEIVER,
        common_labels: common(alerts.iter().map(|a| &a.labels)),
        common_annotations: common(alerts.iter().map(|a| &a.annotations)),
        group_labels,
        external_url: external_url.to_owned(),
        alerts,
    }
}

/// The Alertmanager alerts of one evaluation at `now_ms`: every firing alert with `endsAt` =
/// `now_ms + valid_for` (so that Alertmanager resolves it by itself when obsbox stops sending),
/// and every resolved one with `endsAt` = its resolution time.
pub(crate) fn alertmanager_alerts(
    alerts: &[Alert],
    now_ms: i64,
    valid_for: Duration,
    external_url: &str,
) -> Vec<PostableAlert> {
    let valid_for_ms = i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX);
    alerts
        .iter()
        .filter_map(|a| {
            let ends_at = match a.state {
                AlertState::Firing => now_ms.saturating_add(valid_for_ms),
                AlertState::Resolved => a.resolved_at_ms.unwrap_or(a.since_ms),
                AlertState::Pending | AlertState::Inactive => return None,
            };
            Some(PostableAlert {
                labels: label_map(&a.labels),
                annotations: label_map(&a.annotations),
                starts_at: rfc3339(starts_at(a)),
                ends_at: rfc3339(ends_at),
                generator_url: generator_url(external_url, &a.slo),
            })
        })
        .collect()
}

fn status_of(state: AlertState) -> Option<&'static str> {
    match state {
        AlertState::Firing => Some("firing"),
        AlertState::Resolved => Some("resolved"),
        AlertState::Pending | AlertState::Inactive => None,
    }
}

fn starts_at(a: &Alert) -> i64 {
    a.fired_at_ms.unwrap_or(a.since_ms)
}

/// `<external_url>/slo/<name>`: the SLO's page in obsbox's UI.
fn generator_url(external_url: &str, slo: &str) -> String {
    format!("{external_url}/slo/{slo}")
}

/// Pairs as a map; a repeated name keeps its last value (as a Prometheus label set would).
fn label_map(pairs: &[(String, String)]) -> Labels {
    pairs.iter().cloned().collect()
}

/// The pairs every map has with the same value (Alertmanager's `commonLabels`).
fn common<'a>(mut maps: impl Iterator<Item = &'a Labels>) -> Labels {
    let Some(first) = maps.next() else { return Labels::new() };
    let mut common = first.clone();
    for m in maps {
        common.retain(|k, v| m.get(k) == Some(v));
    }
    common
}

/// A label set as Prometheus prints it: `{a="x", b="y"}`, values quoted like Go's `%q` for the
/// characters SLO labels can hold.
fn label_set_string(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={}", go_quote(v))).collect();
    format!("{{{}}}", pairs.join(", "))
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Alertmanager's alert fingerprint (`model.LabelSet.Fingerprint` of prometheus/common): 64-bit
/// FNV-1a over the labels sorted by name, each name and value followed by the byte 255, printed
/// as 16 hex digits. Alertmanager shows the same value in its API and UI.
pub(crate) fn fingerprint(labels: &Labels) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        add(k.as_bytes());
        add(&[255]);
        add(v.as_bytes());
        add(&[255]);
    }
    format!("{h:016x}")
}

/// Unix milliseconds as RFC 3339 UTC with millisecond precision, clamped to 1970..=9999 (the
/// formatter fails, and `to_string` would panic, past year 9999).
pub(crate) fn rfc3339(ms: i64) -> String {
    const LAST_MS_OF_9999: u64 = 253_402_300_800_000 - 1;
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0).min(LAST_MS_OF_9999));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn alert(slo: &str, tier: &str, state: AlertState) -> Alert {
        let severity = if tier.starts_with("page") { Severity::Page } else { Severity::Ticket };
        Alert {
            slo: slo.into(),
            tier: tier.into(),
            severity,
            state,
            since_ms: T0 + 60_000,
            fired_at_ms: Some(T0 + 60_000),
            resolved_at_ms: (state == AlertState::Resolved).then_some(T0 + 600_000),
            labels: vec![
                ("alertname".into(), "SLOBurnRate".into()),
                ("slo".into(), slo.into()),
                ("service".into(), "checkout".into()),
                ("severity".into(), severity.as_str().into()),
                ("tier".into(), tier.into()),
            ],
            annotations: vec![
                ("summary".into(), format!("{slo} is burning its error budget")),
                ("description".into(), format!("tier {tier}")),
            ],
            webhooks: Vec::new(),
        }
    }

    fn all(_: &Alert) -> bool {
        true
    }

    fn transition(slo: &str, tier: &str, from: AlertState, to: AlertState) -> Transition {
        Transition {
            at_ms: T0 + 60_000,
            slo: slo.into(),
            tier: tier.into(),
            severity: Severity::Page,
            from,
            to,
            long: Some(20.0),
            short: Some(30.0),
        }
    }

    fn golden(name: &str, got: &impl Serialize) {
        let path = format!("{}/tests/fixtures/notify/{name}", env!("CARGO_MANIFEST_DIR"));
        let got = serde_json::to_value(got).unwrap();
        if std::env::var("OBSBOX_BLESS").as_deref() == Ok("1") {
            std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        }
        let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(got, want, "{path} (OBSBOX_BLESS=1 rewrites it)");
    }

    #[test]
    fn webhook_firing_message_is_alertmanagers_format() {
        let alerts = [
            alert("checkout-availability", "page-fast", AlertState::Firing),
            alert("other", "page-fast", AlertState::Firing),
        ];
        let transitions = [transition("checkout-availability", "page-fast", AlertState::Pending, AlertState::Firing)];
        let msgs = webhook_messages(&alerts, &transitions, "http://obsbox.example:16686", all);
        assert_eq!(msgs.len(), 1, "only the SLO with a transition is notified");
        golden("webhook_firing.json", &msgs[0]);
    }

    #[test]
    fn webhook_group_carries_firing_and_resolved_alerts_of_the_slo() {
        let alerts = [
            alert("checkout-availability", "page-fast", AlertState::Resolved),
            alert("checkout-availability", "page-slow", AlertState::Firing),
        ];
        let transitions = [transition("checkout-availability", "page-fast", AlertState::Firing, AlertState::Resolved)];
        let msgs = webhook_messages(&alerts, &transitions, "http://obsbox.example:16686", all);
        golden("webhook_mixed.json", &msgs[0]);
        let v = serde_json::to_value(&msgs[0]).unwrap();
        assert_eq!(v["status"], "firing", "a group with one firing alert is firing");
        assert_eq!(v["alerts"][0]["status"], "resolved");
        assert_eq!(v["alerts"][0]["endsAt"], "2026-01-01T00:10:00.000Z");
        assert_eq!(v["alerts"][1]["endsAt"], ZERO_TIME);
        assert_eq!(v["commonLabels"].get("tier"), None, "tiers differ");
        assert_eq!(v["commonLabels"]["slo"], "checkout-availability");
    }

    #[test]
    fn webhook_only_for_firing_and_resolved_transitions() {
        let alerts = [alert("a", "page-fast", AlertState::Firing)];
        let pending = [transition("a", "page-slow", AlertState::Inactive, AlertState::Pending)];
        assert!(webhook_messages(&alerts, &pending, "http://x", all).is_empty());
        assert!(webhook_messages(&alerts, &[], "http://x", all).is_empty(), "still firing: no new message");
        let resolved = [
            transition("a", "page-fast", AlertState::Firing, AlertState::Resolved),
            transition("a", "page-slow", AlertState::Firing, AlertState::Resolved),
        ];
        let alerts = [alert("a", "page-fast", AlertState::Resolved), alert("a", "page-slow", AlertState::Resolved)];
        let msgs = webhook_messages(&alerts, &resolved, "http://x", all);
        assert_eq!(msgs.len(), 1, "one message per SLO");
        assert_eq!(msgs[0].status, "resolved");
        assert_eq!(msgs[0].alerts.len(), 2);
    }

    #[test]
    fn a_filtered_receiver_hears_only_of_changes_to_its_own_alerts() {
        let mut fast = alert("a", "page-fast", AlertState::Firing);
        fast.webhooks = vec!["http://pager/hook".into()];
        let slow = alert("a", "page-slow", AlertState::Firing);
        let alerts = [fast, slow];
        let pager = |a: &Alert| a.webhooks.iter().any(|w| w == "http://pager/hook");
        // page-slow turned firing while page-fast stays firing: nothing new for the pager.
        let slow_fires = [transition("a", "page-slow", AlertState::Pending, AlertState::Firing)];
        assert!(webhook_messages(&alerts, &slow_fires, "http://x", pager).is_empty());
        assert_eq!(webhook_messages(&alerts, &slow_fires, "http://x", all)[0].alerts.len(), 2);
        let fast_fires = [transition("a", "page-fast", AlertState::Pending, AlertState::Firing)];
        let msgs = webhook_messages(&alerts, &fast_fires, "http://x", pager);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].alerts.len(), 1, "only the pager's alert");
        assert_eq!(msgs[0].alerts[0].labels["tier"], "page-fast");
    }

    #[test]
    fn alertmanager_alerts_are_prometheus_style() {
        let alerts = [
            alert("checkout-availability", "page-fast", AlertState::Firing),
            alert("checkout-availability", "page-slow", AlertState::Resolved),
            alert("checkout-availability", "ticket-fast", AlertState::Pending),
        ];
        let now = T0 + 120_000;
        let got = alertmanager_alerts(&alerts, now, Duration::from_secs(240), "http://obsbox.example:16686");
        golden("alertmanager_alerts.json", &got);
        assert_eq!(got.len(), 2, "pending alerts are not sent");
        assert_eq!(got[0].ends_at, "2026-01-01T00:06:00.000Z", "now + valid_for");
        assert_eq!(got[1].ends_at, "2026-01-01T00:10:00.000Z", "resolution time");
    }

    #[test]
    fn fingerprint_is_prometheus_fnv1a() {
        // The empty label set hashes to the FNV-1a offset basis (prometheus/common's
        // emptyLabelSignature).
        assert_eq!(fingerprint(&Labels::new()), "cbf29ce484222325");
        let a = Labels::from([("a".to_owned(), "b".to_owned())]);
        // FNV-1a 64 of the bytes "a\xffb\xff", computed by hand from the definition.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in [b'a', 255, b'b', 255] {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        assert_eq!(fingerprint(&a), format!("{h:016x}"));
    }

    #[test]
    fn odd_alerts_still_make_valid_json() {
        let mut odd = alert("ünï\"code", "t", AlertState::Resolved);
        odd.labels = vec![("a".into(), "1".into()), ("a".into(), "2".into()), ("".into(), "\n".into())];
        odd.annotations.clear();
        odd.since_ms = i64::MIN;
        odd.fired_at_ms = None;
        odd.resolved_at_ms = Some(i64::MAX);
        let t = transition(&odd.slo, "t", AlertState::Firing, AlertState::Resolved);
        let msgs = webhook_messages(std::slice::from_ref(&odd), &[t], "http://x", all);
        let v = serde_json::to_value(&msgs[0]).unwrap();
        assert_eq!(v["alerts"][0]["labels"]["a"], "2", "a repeated label keeps its last value");
        assert_eq!(v["alerts"][0]["startsAt"], "1970-01-01T00:00:00.000Z");
        let am = alertmanager_alerts(&[odd], i64::MAX, Duration::MAX, "http://x");
        assert_eq!(serde_json::to_value(&am).unwrap()[0]["endsAt"], "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn group_key_and_times() {
        let l = Labels::from([("slo".to_owned(), "a\"b".to_owned())]);
        assert_eq!(label_set_string(&l), r#"{slo="a\"b"}"#);
        assert_eq!(rfc3339(T0), "2026-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z", "clamped, no panic");
    }
}
