//! Money (docs/settlement.md): integer cents, the charge for a completed session and the
//! platform fee.

use crate::types::Reason;

/// An amount in the currency's minor unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cents(pub i64);

/// The largest price amount accepted: ten billion cents. With billing capped
/// at `max_duration_seconds`, no charge can come near `i64::MAX`.
pub const AMOUNT_CENTS_MAX: i64 = 10_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceMode {
    Flat,
    PerMinute,
}

impl PriceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceMode::Flat => "flat",
            PriceMode::PerMinute => "per_minute",
        }
    }

    pub fn parse(text: &str) -> Option<PriceMode> {
        match text {
            "flat" => Some(PriceMode::Flat),
            "per_minute" => Some(PriceMode::PerMinute),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    pub mode: PriceMode,
    pub amount: Cents,
    /// ISO 4217 code, lower case as Stripe writes it.
    pub currency: String,
}

/// What the customer is charged for a session with this outcome: nothing
/// unless completed; `flat` the amount; `per_minute` every started minute.
pub fn charge_for(price: &Price, reason: Reason, billable_seconds: i64) -> Cents {
    if reason != Reason::Completed {
        return Cents(0);
    }
    match price.mode {
        PriceMode::Flat => price.amount,
        PriceMode::PerMinute => {
            let minutes = (billable_seconds.max(0) as u64).div_ceil(60) as i64;
            Cents(minutes.saturating_mul(price.amount.0))
        }
    }
}

/// The platform's share of a charge, `charge × bps / 10000` rounded half-up
/// to the cent.
pub fn platform_fee(charge: Cents, fee_bps: i64) -> Cents {
    assert!(charge.0 >= 0 && (0..=10_000).contains(&fee_bps), "fee inputs out of range");
    let scaled = i128::from(charge.0) * i128::from(fee_bps);
    Cents(((scaled + 5_000) / 10_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(mode: PriceMode, amount: i64) -> Price {
        Price { mode, amount: Cents(amount), currency: "usd".into() }
    }

    #[test]
    fn flat_charges_the_amount_and_per_minute_every_started_minute() {
        assert_eq!(charge_for(&price(PriceMode::Flat, 2500), Reason::Completed, 61), Cents(2500));
        assert_eq!(
            charge_for(&price(PriceMode::PerMinute, 100), Reason::Completed, 60),
            Cents(100)
        );
        assert_eq!(
            charge_for(&price(PriceMode::PerMinute, 100), Reason::Completed, 61),
            Cents(200)
        );
        assert_eq!(charge_for(&price(PriceMode::Flat, 2500), Reason::TooShort, 30), Cents(0));
    }

    #[test]
    fn the_fee_rounds_half_cents_up() {
        // 1 cent at 50 % is half a cent: up to 1.
        assert_eq!(platform_fee(Cents(1), 5_000), Cents(1));
        // 1 cent at 49.99 % is just under half a cent: down to 0.
        assert_eq!(platform_fee(Cents(1), 4_999), Cents(0));
        assert_eq!(platform_fee(Cents(2_525), 2_000), Cents(505));
        assert_eq!(platform_fee(Cents(2_527), 2_000), Cents(505)); // 505.4
        assert_eq!(platform_fee(Cents(2_528), 2_000), Cents(506)); // 505.6
    }
}
