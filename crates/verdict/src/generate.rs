//! `verdict generate`: a seeded, realistic history in the import format
//! (docs/import.md), for benchmarks and demos. Mostly right, a few percent
//! recorded wrong in both directions, as an old client-trusting system
//! would have left it.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use verdict_core::UnixMillis;
use verdict_http::wire::format_instant;

/// Writes `sessions` lines ending over the `days` before `now`.
pub fn history(
    out: &mut impl Write,
    sessions: u64,
    days: u64,
    seed: u64,
    now: UnixMillis,
) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let span_millis = (days.max(1) * 86_400_000) as i64;
    for n in 0..sessions {
        let ended = now.0 - rng.random_range(0..span_millis);
        let created = ended - 3_600_000;
        let at = |offset_seconds: i64| format_instant(UnixMillis(created + offset_seconds * 1000));
        let customer = format!("c{}", rng.random_range(0..50_000));
        let provider = format!("p{}", rng.random_range(0..5_000));
        let amount = rng.random_range(1_000..6_000);
        let roll = rng.random_range(0..100);
        let together = |from: i64, seconds: i64| {
            json!([
                {"type": "joined", "party": "customer", "at": at(from)},
                {"type": "joined", "party": "provider", "at": at(from + 30)},
                {"type": "left", "party": "provider", "at": at(from + 30 + seconds)},
                {"type": "left", "party": "customer", "at": at(from + 40 + seconds)},
            ])
        };
        let share = amount - (amount * 2000 + 5000) / 10000;
        let paid = json!([{"amount_cents": share, "currency": "usd", "state": "paid"}]);
        let (status, reason, events, payouts) = match roll {
            0..60 => {
                ("completed", "completed", together(60, rng.random_range(300..3000)), paid.clone())
            }
            60..80 => {
                let events = json!([{"type": "joined", "party": "customer", "at": at(120)}]);
                ("cancelled", "no_show_provider", events, json!([]))
            }
            80..90 => ("cancelled", "too_short", together(60, rng.random_range(5..55)), json!([])),
            // Recorded completed (and paid), but the provider never came.
            90..95 => {
                let events = json!([{"type": "joined", "party": "customer", "at": at(120)}]);
                ("completed", "completed", events, paid.clone())
            }
            // Recorded cancelled, yet both were there for 20 minutes.
            _ => ("cancelled", "too_short", together(60, 1200), json!([])),
        };
        let line = json!({
            "id": format!("hist-{seed}-{n:08}"),
            "kind": "video",
            "customer_id": customer,
            "provider_id": provider,
            "price": {"mode": "flat", "amount_cents": amount, "currency": "usd"},
            "status": status,
            "reason": reason,
            "created_at": at(0),
            "ended_at": format_instant(UnixMillis(ended)),
            "events": events,
            "payouts": payouts,
        });
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
