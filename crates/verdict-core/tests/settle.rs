//! Properties of settlement plans: whatever the history, price and policy,
//! every posting balances, a payout exists iff the session is completed and
//! final, planning twice gives the same plan, and a reversal nets the
//! session's books to zero.

use std::collections::BTreeMap;

use proptest::prelude::*;
use verdict_core::{
    Books, Cents, Connection, EndCause, EndRequest, Message, Party, PayoutFacts, Policy,
    PresenceEvent, PresenceKind, Price, PriceMode, SessionFacts, SettleFacts, SettleRules, Status,
    UnixMillis, plan_correction, plan_end, plan_finalize, plan_reversal,
};

const T0: i64 = 1_700_000_000_000;

fn at(seconds: i64) -> UnixMillis {
    UnixMillis(T0 + seconds * 1000)
}

fn events() -> impl Strategy<Value = Vec<PresenceEvent>> {
    prop::collection::vec(
        (any::<bool>(), 0..3u8, 0i64..4_000).prop_map(|(customer, kind, seconds)| PresenceEvent {
            party: if customer { Party::Customer } else { Party::Provider },
            kind: match kind {
                0 => PresenceKind::Joined,
                1 => PresenceKind::Left,
                _ => PresenceKind::Heartbeat,
            },
            at: at(seconds),
            connection: Connection::OWN,
        }),
        0..12,
    )
}

fn facts() -> impl Strategy<Value = SettleFacts> {
    (
        any::<bool>(),
        1i64..100_000,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(per_minute, amount, account, stripe, mail_c, mail_p, room)| SettleFacts {
            session_id: "s1".into(),
            customer_id: "c1".into(),
            provider_id: "p1".into(),
            price: Price {
                mode: if per_minute { PriceMode::PerMinute } else { PriceMode::Flat },
                amount: Cents(amount),
                currency: "usd".into(),
            },
            provider_account: account.then(|| "acct_session".to_owned()),
            provider_stripe_account: stripe.then(|| "acct_user".to_owned()),
            customer_email: mail_c.then(|| "c@example.com".to_owned()),
            provider_email: mail_p.then(|| "p@example.com".to_owned()),
            request_id: account.then(|| "r1".to_owned()),
            has_room: room,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (0i64..300, 0i64..5_000).prop_map(|(min, fee)| Policy {
        min_billable_seconds: min,
        platform_fee_bps: fee,
        ..Policy::default()
    })
}

fn rules(automatic: bool) -> SettleRules {
    SettleRules { payouts_automatic: automatic, finalize_after_seconds: 600 }
}

fn session() -> SessionFacts {
    SessionFacts { created_at: at(0), scheduled_start: None, recorded: None }
}

proptest! {
    #[test]
    fn an_end_plan_balances_pays_iff_completed_and_final_and_is_repeatable(
        facts in facts(),
        events in events(),
        policy in policy(),
        end in 0i64..5_000,
        automatic in any::<bool>(),
    ) {
        let end = EndRequest::new(at(end), EndCause::Requested);
        let plan = |facts: &SettleFacts| {
            plan_end(facts, &session(), &events, &policy, &rules(automatic), end, end.at)
        };
        let first = plan(&facts).expect("an open session always has a plan");
        let second = plan(&facts);
        prop_assert_eq!(Some(&first), second.as_ref());

        let completed = first.outcome.status == Status::Completed;
        let is_final = !facts.has_room;
        prop_assert_eq!(first.money.payout.is_some(), completed && is_final);
        prop_assert_eq!(first.money.posting.is_some(), completed && is_final);
        prop_assert_eq!(first.finalizes_at.is_some(), facts.has_room);
        if let (Some(posting), Some(payout)) = (&first.money.posting, &first.money.payout) {
            prop_assert!(posting.is_balanced(), "{:?}", posting);
            let charged: i64 = posting.lines.iter().filter(|line| line.1 > 0).map(|line| line.1).sum();
            prop_assert_eq!(charged, first.charged.0);
            // The payout is the provider's credit, never more than charged.
            let provider = posting.lines.iter().find(|line| line.0.starts_with("provider_payable:"));
            prop_assert_eq!(provider.map(|line| -line.1), Some(payout.amount.0));
            prop_assert!(payout.amount.0 <= first.charged.0 && payout.amount.0 >= 0);
            let pays = first.money.messages.iter().any(|m| matches!(m, Message::Payout { .. }));
            prop_assert_eq!(pays, automatic);
        }
        // Receipts go to known addresses only, and only when final.
        let receipts = first.money.messages.iter().filter(|m| matches!(m, Message::Receipt { .. })).count();
        let known = usize::from(facts.customer_email.is_some()) + usize::from(facts.provider_email.is_some());
        prop_assert_eq!(receipts, if is_final { known } else { 0 });
        prop_assert_eq!(first.request_status.is_some(), facts.request_id.is_some());
    }

    #[test]
    fn a_terminal_session_has_no_end_plan(facts in facts(), events in events(), policy in policy()) {
        let end = EndRequest::new(at(4_000), EndCause::Requested);
        let open = plan_end(&facts, &session(), &events, &policy, &rules(true), end, end.at)
            .expect("open");
        let terminal = SessionFacts { recorded: Some(open.outcome), ..session() };
        prop_assert!(plan_end(&facts, &terminal, &events, &policy, &rules(true), end, end.at).is_none());
    }

    #[test]
    fn finalization_pays_a_completed_session_once_and_balances(
        facts in facts(),
        events in events(),
        policy in policy(),
    ) {
        let end = EndRequest::new(at(4_500), EndCause::Requested);
        let facts = SettleFacts { has_room: true, ..facts };
        let ended = plan_end(&facts, &session(), &events, &policy, &rules(true), end, end.at)
            .expect("open");
        prop_assert!(ended.money.payout.is_none());
        let plan = plan_finalize(&facts, &ended.outcome, ended.charged, &policy, &rules(true));
        let completed = ended.outcome.status == Status::Completed;
        prop_assert_eq!(plan.money.payout.is_some(), completed);
        prop_assert!(plan.money.posting.iter().all(|posting| posting.is_balanced()));
    }

    #[test]
    fn a_reversal_nets_the_books_to_zero(
        facts in facts(),
        policy in policy(),
        charged in 0i64..1_000_000,
        paid in any::<bool>(),
    ) {
        let money = verdict_core::plan_money(&facts, Status::Completed, Cents(charged), &policy, &rules(true));
        let posting = money.posting.expect("completed");
        let payout = money.payout.expect("completed");
        let payouts = [PayoutFacts {
            id: payout.id.clone(),
            amount: payout.amount,
            state: if paid { "paid".into() } else { "pending".into() },
            provider: "stripe".into(),
            transfer_id: paid.then(|| "tr_1".to_owned()),
        }];
        let reversal = plan_reversal(&facts, &posting.lines, &payouts);
        let mut books: BTreeMap<String, i64> = BTreeMap::new();
        for (account, amount) in posting.lines.iter().chain(reversal.posting.iter().flat_map(|p| p.lines.iter())) {
            *books.entry(account.clone()).or_default() += amount;
        }
        prop_assert!(books.values().all(|total| *total == 0), "{:?}", books);
        prop_assert!(reversal.posting.iter().all(|posting| posting.is_balanced()));
        prop_assert_eq!(reversal.payouts, vec![payout.id]);
        prop_assert_eq!(reversal.messages.len(), 1);
    }

    #[test]
    fn a_correction_to_completed_pays_once_and_away_from_it_reverses(
        facts in facts(),
        events in events(),
        policy in policy(),
    ) {
        let facts = SettleFacts { has_room: false, ..facts };
        let end = EndRequest::new(at(4_500), EndCause::Requested);
        let expected = plan_end(&facts, &session(), &events, &policy, &rules(true), end, end.at)
            .expect("open").outcome;
        let wrong = verdict_core::Outcome {
            status: if expected.status == Status::Completed { Status::Cancelled } else { Status::Completed },
            reason: if expected.status == Status::Completed { verdict_core::Reason::NoShowBoth } else { verdict_core::Reason::Completed },
            ..expected
        };
        let empty = Books { net: Vec::new(), payouts: Vec::new(), any_payout: false };
        let plan = plan_correction(&facts, &wrong, Cents(0), &expected, &policy, &rules(true), false, &empty)
            .expect("a different status is corrected");
        prop_assert_eq!(plan.money.payout.is_some(), expected.status == Status::Completed);
        prop_assert!(plan.money.posting.iter().all(|posting| posting.is_balanced()));
        let receipts = plan.money.messages.iter().any(|m| matches!(m, Message::Receipt { .. }));
        prop_assert!(!receipts, "a correction sends no receipt");
        // The recorded outcome re-derived as itself stands.
        prop_assert!(plan_correction(&facts, &expected, plan.charged, &expected, &policy, &rules(true), false, &empty).is_none());
        // A session paid once is never paid twice by a correction.
        let paid = Books { any_payout: true, ..empty };
        let again = plan_correction(&facts, &wrong, Cents(0), &expected, &policy, &rules(true), false, &paid)
            .expect("still a correction");
        prop_assert!(again.money.payout.is_none());
    }
}

proptest! {
    /// A session not completed that was paid anyway (the old system paid a
    /// cancelled or expired session) has its payout reversed even though
    /// its status stands; one never paid stands untouched.
    #[test]
    fn an_unearned_payout_is_reversed_even_when_the_status_stands(
        facts in facts(),
        events in events(),
        policy in policy(),
        amount in 1i64..100_000,
    ) {
        let facts = SettleFacts { has_room: false, ..facts };
        let end = EndRequest::new(at(4_500), EndCause::Requested);
        let outcome = plan_end(&facts, &session(), &events, &policy, &rules(true), end, end.at)
            .expect("open").outcome;
        prop_assume!(outcome.status != Status::Completed);
        let empty = Books { net: Vec::new(), payouts: Vec::new(), any_payout: false };
        prop_assert!(plan_correction(&facts, &outcome, Cents(0), &outcome, &policy, &rules(true), false, &empty).is_none());
        let payout = PayoutFacts {
            id: "po_s1".into(),
            amount: Cents(amount),
            state: "paid".into(),
            provider: "manual".into(),
            transfer_id: None,
        };
        let paid = Books {
            net: vec![("p:p1".into(), -amount), ("platform".into(), amount)],
            payouts: vec![payout],
            any_payout: true,
        };
        let plan = plan_correction(&facts, &outcome, Cents(0), &outcome, &policy, &rules(true), false, &paid)
            .expect("the payout is corrected");
        let reversal = plan.reversal.expect("a reversal");
        prop_assert_eq!(reversal.payouts, vec!["po_s1".to_owned()]);
        let posting = reversal.posting.expect("a reversal posting");
        prop_assert!(posting.is_balanced());
        prop_assert_eq!(plan.money_effect, 0);
        prop_assert!(plan.money.payout.is_none());
        // Inside a finalization window no money moves.
        prop_assert!(plan_correction(&facts, &outcome, Cents(0), &outcome, &policy, &rules(true), true, &paid).is_none());
    }
}
