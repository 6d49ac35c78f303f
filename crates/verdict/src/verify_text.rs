//! `verdict verify`'s table as a person reads it: one row per check, the
//! informational rows showing their figure, and each row explained in one
//! line below the table (docs/verification.md says more).

use std::fmt::Write;

use verdict_store::monitor::Report;

/// What a row of the report checks, in one line; `None` for a row this
/// build does not know (a newer section shows without explanation rather
/// than not at all).
pub fn explain(section: &str) -> Option<&'static str> {
    Some(match section {
        "schema" => "the database's schema version is the one this binary expects",
        "misclassified_completed" => {
            "recorded completed, but the presence says it did not happen (over-billed)"
        }
        "misclassified_cancelled" => {
            "recorded cancelled, but both parties were there past the minimum (under-billed)"
        }
        "missing_join_events" => "ended with billable time but without a join event per party",
        "timestamp_integrity" => "times out of order: created, started, ended, events",
        "payout_accuracy" => {
            "a completed session without exactly one payout of its share, or a payout for another"
        }
        "ledger_balance" => "ledger postings whose lines do not sum to zero",
        "request_consistency" => "a request whose status disagrees with its session's",
        "stuck_sessions" => "open sessions the sweeper should have ended more than 60 s ago",
        "payouts_paid_after_reversal" => "payouts paid at Stripe after verdict reversed them",
        "outbox_health" => "deliveries dead, or pending more than 15 min past due",
        "recent_activity" => "info: sessions ended in the last 24 h, by status",
        "health_score" => {
            "info: the 24 h health score (0-100) and its label; count = sessions ended in the window"
        }
        "by_kind" => "info: sessions per kind, and how many of each have findings (the line below)",
        "metadata_consistency" => {
            "sessions verdict ended without their receipts: one ended event, notifications, outbox, request"
        }
        _ => return None,
    })
}

/// The report as a table, each row then explained.
pub fn table(report: &Report) -> Result<String, std::fmt::Error> {
    let mut text =
        format!("{:<28} {:<6} {:>8}  {:<9} sample\n", "section", "ok", "count", "severity");
    for section in &report.sections {
        // An informational row shows its figure where a check shows ids.
        let shown = match (&section.detail, section.sample.is_empty()) {
            (Some(detail), true) if section.severity == "info" => figure(detail),
            _ => section.sample.join(" "),
        };
        writeln!(
            text,
            "{:<28} {:<6} {:>8}  {:<9} {}",
            section.name,
            if section.ok { "ok" } else { "FAIL" },
            section.count,
            section.severity,
            shown
        )?;
    }
    writeln!(text, "\nwhat each row checks (docs/verification.md):")?;
    for section in &report.sections {
        if let Some(line) = explain(section.name) {
            writeln!(text, "  {:<28} {line}", section.name)?;
        }
    }
    Ok(text)
}

/// `score=89.4 label=good`, `completed=197 cancelled=104`: a detail object's
/// fields, one level deep.
fn figure(detail: &serde_json::Value) -> String {
    match detail.as_object() {
        Some(fields) => fields
            .iter()
            .filter_map(|(key, value)| match value {
                serde_json::Value::String(text) => Some(format!("{key}={text}")),
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                    Some(format!("{key}={value}"))
                }
                // Nested figures (per kind) have lines of their own.
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_information_row_shows_its_figure_and_every_row_is_explained() {
        use verdict_store::monitor::Section;
        let report = Report {
            ok: true,
            sessions: 483,
            sections: vec![
                Section {
                    name: "health_score",
                    ok: true,
                    count: 483,
                    severity: "info",
                    sample: Vec::new(),
                    detail: Some(serde_json::json!({"score": 89.4, "label": "good"})),
                },
                Section {
                    name: "stuck_sessions",
                    ok: false,
                    count: 1,
                    severity: "warning",
                    sample: vec!["s1".into()],
                    detail: None,
                },
            ],
        };
        let text = table(&report).unwrap();
        let health = text.lines().find(|line| line.starts_with("health_score")).unwrap();
        assert!(health.ends_with("label=good score=89.4"), "{health}");
        assert!(text.contains("FAIL") && text.contains(" s1"), "{text}");
        for name in ["health_score", "stuck_sessions"] {
            let explained = text.lines().filter(|line| line.trim_start().starts_with(name)).count();
            assert_eq!(explained, 2, "{name}: its row and its line of explanation\n{text}");
        }
    }

    /// Every row a real report has is explained (a new section without its
    /// line fails here).
    #[tokio::test]
    async fn every_row_of_a_real_report_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/verify.db", dir.path().display());
        let store = verdict_store::open(&url).await.unwrap();
        let settings = crate::config::Config::default().settings().unwrap();
        let now = verdict_store::clock::Clock::now(&verdict_store::clock::SystemClock);
        let report = verdict_store::monitor::verify(&store, &settings, now, |_| {}).await.unwrap();
        assert!(report.sections.len() >= 12);
        for section in &report.sections {
            assert!(explain(section.name).is_some(), "{} has no explanation", section.name);
        }
    }
}
