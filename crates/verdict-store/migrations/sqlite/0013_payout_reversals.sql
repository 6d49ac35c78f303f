-- Payouts and their reversals, as Stripe saw them (issue 24, money).
-- `paid_at`: when the transfer was recorded; a payout paid after its
-- reversal (`paid_at > reversed_at`) still owes a reversal at Stripe.
-- `reversal_settled_at`: when the reversal's delivery finished, with
-- `reversal_id` Stripe's reversal when money came back through Stripe
-- (NULL when nothing was at Stripe to reverse).
ALTER TABLE payouts ADD COLUMN paid_at INTEGER;
ALTER TABLE payouts ADD COLUMN reversal_settled_at INTEGER;
ALTER TABLE payouts ADD COLUMN reversal_id TEXT;
-- Before this migration a payout's `updated_at` was its last change: the
-- transfer, or the reversal (then equal to `reversed_at`).
UPDATE payouts SET paid_at = updated_at WHERE state = 'paid';
