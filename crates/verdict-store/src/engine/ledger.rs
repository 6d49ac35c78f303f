//! The ledger read back (postings, earnings, payouts) and the users that
//! payouts go to.

use std::collections::BTreeMap;

use sqlx::Row;
use verdict_core::{Cents, UnixMillis};

use crate::{EarningsTotal, LedgerLine, Payout, PayoutState, Posting, StoreError, User, accounts};

use super::Engine;
use super::dialect::BEGIN_WRITE;
use super::rows::payout_from_row;

impl Engine {
    pub(super) async fn payouts(
        &self,
        session_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Payout>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            payout_columns!(),
            " FROM payouts WHERE ($1 IS NULL OR session_id = $1) AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(session_id)
        .bind(after.unwrap_or(""))
        .bind(limit.clamp(1, crate::PAGE_LIMIT_MAX))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(payout_from_row).collect()
    }

    pub(super) async fn payout(&self, id: &str) -> Result<Option<Payout>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", payout_columns!(), " FROM payouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(payout_from_row).transpose()
    }

    pub(super) async fn earnings(
        &self,
        provider_id: &str,
    ) -> Result<Vec<EarningsTotal>, StoreError> {
        // A reversal posting nets its session's earning to zero: such a
        // session is not counted as one that earned.
        let ledger = sqlx::query(
            "SELECT p.currency, CAST(-SUM(l.amount_cents) AS BIGINT) AS earned, \
             COUNT(DISTINCT CASE WHEN p.kind = 'settlement' AND NOT EXISTS ( \
             SELECT 1 FROM ledger_postings r WHERE r.session_id = p.session_id \
             AND r.kind = 'reversal') THEN p.session_id END) AS sessions \
             FROM ledger_lines l JOIN ledger_postings p ON p.id = l.posting_id \
             WHERE l.account = $1 GROUP BY p.currency ORDER BY p.currency",
        )
        .bind(accounts::provider_payable(provider_id))
        .fetch_all(&self.reader)
        .await?;
        let payouts = sqlx::query(
            "SELECT currency, CASE WHEN reversed_at IS NULL THEN state ELSE 'reversed' END \
             AS state, CAST(SUM(amount_cents) AS BIGINT) AS total FROM payouts \
             WHERE provider_id = $1 \
             GROUP BY currency, CASE WHEN reversed_at IS NULL THEN state ELSE 'reversed' END",
        )
        .bind(provider_id)
        .fetch_all(&self.reader)
        .await?;
        let mut totals: BTreeMap<String, EarningsTotal> = BTreeMap::new();
        let empty = |currency: &str| EarningsTotal {
            currency: currency.to_owned(),
            earned: Cents(0),
            sessions: 0,
            paid: Cents(0),
            pending: Cents(0),
            failed: Cents(0),
            reversed: Cents(0),
        };
        for row in &ledger {
            let currency: String = row.try_get("currency")?;
            let total = totals.entry(currency.clone()).or_insert_with(|| empty(&currency));
            total.earned = Cents(row.try_get("earned")?);
            total.sessions = row.try_get("sessions")?;
        }
        for row in &payouts {
            let currency: String = row.try_get("currency")?;
            let state: String = row.try_get("state")?;
            let amount = Cents(row.try_get("total")?);
            let total = totals.entry(currency.clone()).or_insert_with(|| empty(&currency));
            if state == "reversed" {
                total.reversed = amount;
                continue;
            }
            match PayoutState::parse(&state) {
                Some(PayoutState::Paid) => total.paid = amount,
                Some(PayoutState::Pending) => total.pending = amount,
                Some(PayoutState::Failed) => total.failed = amount,
                None => return Err(StoreError::Corrupt(format!("payout state {state:?}"))),
            }
        }
        Ok(totals.into_values().collect())
    }

    /// A payout recorded `paid` after a repair reversed it, with a real
    /// transfer and no reversal of it at Stripe: money out that the books
    /// say came back.
    pub(super) async fn paid_after_reversal(
        &self,
        sample: usize,
    ) -> Result<(i64, Vec<String>), StoreError> {
        let rows = sqlx::query(
            "SELECT session_id, COUNT(*) OVER () AS total FROM payouts \
             WHERE reversed_at IS NOT NULL AND state = 'paid' \
             AND paid_at > reversed_at AND reversal_id IS NULL \
             AND transfer_id IS NOT NULL AND transfer_id NOT LIKE 'none:%' \
             ORDER BY session_id LIMIT $1",
        )
        .bind(sample.max(1) as i64)
        .fetch_all(&self.reader)
        .await?;
        super::rows::counted_sample(&rows, sample)
    }

    pub(super) async fn postings(&self, session_id: &str) -> Result<Vec<Posting>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.id, p.session_id, p.kind, p.currency, p.created_at, l.account, \
             l.amount_cents FROM ledger_postings p JOIN ledger_lines l ON l.posting_id = p.id \
             WHERE p.session_id = $1 ORDER BY p.id, l.id",
        )
        .bind(session_id)
        .fetch_all(&self.reader)
        .await?;
        let mut postings: Vec<Posting> = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            if postings.last().is_none_or(|last| last.id != id) {
                postings.push(Posting {
                    id,
                    session_id: row.try_get("session_id")?,
                    kind: row.try_get("kind")?,
                    currency: row.try_get("currency")?,
                    created_at: UnixMillis(row.try_get("created_at")?),
                    lines: Vec::new(),
                });
            }
            let line = LedgerLine {
                account: row.try_get("account")?,
                amount: Cents(row.try_get("amount_cents")?),
            };
            if let Some(posting) = postings.last_mut() {
                posting.lines.push(line);
            }
        }
        Ok(postings)
    }

    pub(super) async fn upsert_user(&self, user: User) -> Result<User, StoreError> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        sqlx::query(
            "INSERT INTO users (id, email, display_name, stripe_account, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
             email = COALESCE(excluded.email, users.email), \
             display_name = COALESCE(excluded.display_name, users.display_name), \
             stripe_account = COALESCE(excluded.stripe_account, users.stripe_account), \
             updated_at = excluded.updated_at",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(&user.stripe_account)
        .bind(user.updated_at.0)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT id, email, display_name, stripe_account, updated_at FROM users WHERE id = $1",
        )
        .bind(&user.id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(User {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            display_name: row.try_get("display_name")?,
            stripe_account: row.try_get("stripe_account")?,
            updated_at: UnixMillis(row.try_get("updated_at")?),
        })
    }
}
