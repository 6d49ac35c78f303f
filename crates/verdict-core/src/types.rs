//! The vocabulary of verdict (docs/api.md): kinds, parties, statuses, reasons and
//! the instant type. The string forms are the wire and storage forms.

use std::fmt;
use std::str::FromStr;

/// An instant as milliseconds since the Unix epoch, UTC.
///
/// Milliseconds rather than a calendar type: the core only compares and
/// subtracts instants, and the wire format (RFC 3339 with milliseconds) has
/// exactly this resolution, so nothing is lost in either direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    pub fn plus_seconds(self, seconds: i64) -> UnixMillis {
        UnixMillis(self.0.saturating_add(seconds.saturating_mul(1000)))
    }

    /// Milliseconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn millis_since(self, earlier: UnixMillis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A string that names none of an enum's variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub what: &'static str,
    pub expected: &'static [&'static str],
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {}, expected one of: {}", self.what, self.expected.join(", "))
    }
}

impl std::error::Error for ParseError {}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ParseError { what: $what, expected: $name::NAMES }),
                }
            }
        }
    };
}

string_enum!(
    /// What kind of meeting a session is. One table, one semantics for all.
    Kind, "kind" { Video => "video", Chat => "chat", Diagnostic => "diagnostic" }
);

string_enum!(
    /// One of the two sides of a session.
    Party, "party" { Customer => "customer", Provider => "provider" }
);

string_enum!(
    /// A session's status. `Waiting` and `Live` are non-terminal.
    Status, "status" {
        Waiting => "waiting",
        Live => "live",
        Completed => "completed",
        Cancelled => "cancelled",
        Expired => "expired",
    }
);

string_enum!(
    /// Why a terminal session has the status it has.
    Reason, "reason" {
        Completed => "completed",
        TooShort => "too_short",
        NoShowCustomer => "no_show_customer",
        NoShowProvider => "no_show_provider",
        NoShowBoth => "no_show_both",
        NeverOverlapped => "never_overlapped",
    }
);

string_enum!(
    /// Who a caller (or the system) is. `System` is the service itself, for
    /// the sweeper and repair; it never comes from a token.
    Role, "role" {
        Customer => "customer",
        Provider => "provider",
        Service => "service",
        Admin => "admin",
        System => "system",
    }
);

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Cancelled | Status::Expired)
    }
}

impl Party {
    pub fn other(self) -> Party {
        match self {
            Party::Customer => Party::Provider,
            Party::Provider => Party::Customer,
        }
    }
}

impl Reason {
    /// The reason a session that never had both parties present gets, from
    /// whether each party ever joined (docs/presence.md).
    pub fn for_never_started(customer_joined: bool, provider_joined: bool) -> Reason {
        match (customer_joined, provider_joined) {
            (false, false) => Reason::NoShowBoth,
            (false, true) => Reason::NoShowCustomer,
            (true, false) => Reason::NoShowProvider,
            (true, true) => Reason::NeverOverlapped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_form_round_trips() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>().unwrap(), *kind);
        }
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), *status);
        }
        for reason in Reason::ALL {
            assert_eq!(reason.as_str().parse::<Reason>().unwrap(), *reason);
        }
        let error = "Video".parse::<Kind>().unwrap_err();
        assert_eq!(error.to_string(), "unknown kind, expected one of: video, chat, diagnostic");
    }
}
