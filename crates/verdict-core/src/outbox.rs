//! What the outbox carries, as types: a [`Topic`] names a kind of message
//! and its delivery [`Channel`]; a [`Message`] is one, with its content.
//! The store writes a topic's name with each row and the worker reads it
//! back with [`Topic::parse`]: the names are written here once, and no
//! prefix is parsed anywhere else.

use crate::decide::Outcome;
use crate::pricing::Cents;
use crate::types::{Party, UnixMillis};

/// How a message is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A signed webhook to the platform.
    Webhook,
    /// An e-mail to a party.
    Email,
    /// A call to the payment provider.
    Payout,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
            Channel::Payout => "payout",
        }
    }
}

/// A kind of outbox message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Webhook `session.started`.
    SessionStarted,
    /// Webhook `session.ended`: the first decision.
    SessionEnded,
    /// Webhook `session.finalized`: the final decision of a session with a
    /// finalization window.
    SessionFinalized,
    /// Webhook `payout.paid`.
    PayoutPaid,
    /// Webhook `payout.failed`.
    PayoutFailed,
    /// The e-mail receipt to a party.
    Receipt(Party),
    /// A transfer paying a payout.
    Payout,
    /// Undoing a payout a repair reversed.
    PayoutReversal,
    /// Webhook `alert.raised`: a threshold alert started (no session).
    AlertRaised,
    /// Webhook `alert.resolved`: a raised threshold alert ended.
    AlertResolved,
}

impl Topic {
    pub const ALL: [Topic; 11] = [
        Topic::SessionStarted,
        Topic::SessionEnded,
        Topic::SessionFinalized,
        Topic::PayoutPaid,
        Topic::PayoutFailed,
        Topic::Receipt(Party::Customer),
        Topic::Receipt(Party::Provider),
        Topic::Payout,
        Topic::PayoutReversal,
        Topic::AlertRaised,
        Topic::AlertResolved,
    ];

    /// The name stored with each row.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::SessionStarted => "webhook:session.started",
            Topic::SessionEnded => "webhook:session.ended",
            Topic::SessionFinalized => "webhook:session.finalized",
            Topic::PayoutPaid => "webhook:payout.paid",
            Topic::PayoutFailed => "webhook:payout.failed",
            Topic::Receipt(Party::Customer) => "email:receipt:customer",
            Topic::Receipt(Party::Provider) => "email:receipt:provider",
            Topic::Payout => "payout",
            Topic::PayoutReversal => "payout.reversal",
            Topic::AlertRaised => "webhook:alert.raised",
            Topic::AlertResolved => "webhook:alert.resolved",
        }
    }

    pub fn parse(text: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|topic| topic.as_str() == text)
    }

    pub fn channel(self) -> Channel {
        match self {
            Topic::SessionStarted
            | Topic::SessionEnded
            | Topic::SessionFinalized
            | Topic::PayoutPaid
            | Topic::PayoutFailed
            | Topic::AlertRaised
            | Topic::AlertResolved => Channel::Webhook,
            Topic::Receipt(_) => Channel::Email,
            Topic::Payout | Topic::PayoutReversal => Channel::Payout,
        }
    }

    /// The webhook event type (`session.ended`, …), for webhook topics.
    pub fn webhook_event(self) -> Option<&'static str> {
        match self {
            Topic::SessionStarted => Some("session.started"),
            Topic::SessionEnded => Some("session.ended"),
            Topic::SessionFinalized => Some("session.finalized"),
            Topic::PayoutPaid => Some("payout.paid"),
            Topic::PayoutFailed => Some("payout.failed"),
            Topic::AlertRaised => Some("alert.raised"),
            Topic::AlertResolved => Some("alert.resolved"),
            _ => None,
        }
    }
}

/// One outbox message of a session, with what it says. The store renders
/// its payload; the topic is [`Message::topic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    SessionStarted {
        at: UnixMillis,
    },
    SessionEnded {
        outcome: Outcome,
        charged: Cents,
    },
    SessionFinalized {
        outcome: Outcome,
        charged: Cents,
    },
    Receipt {
        party: Party,
        to: String,
    },
    Payout {
        payout_id: String,
    },
    PayoutReversal {
        payout_id: String,
        state: String,
        provider: String,
        transfer_id: Option<String>,
        amount: Cents,
    },
}

impl Message {
    pub fn topic(&self) -> Topic {
        match self {
            Message::SessionStarted { .. } => Topic::SessionStarted,
            Message::SessionEnded { .. } => Topic::SessionEnded,
            Message::SessionFinalized { .. } => Topic::SessionFinalized,
            Message::Receipt { party, .. } => Topic::Receipt(*party),
            Message::Payout { .. } => Topic::Payout,
            Message::PayoutReversal { .. } => Topic::PayoutReversal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Topic;

    #[test]
    fn every_topic_reads_back_as_itself_and_names_its_channel() {
        for topic in Topic::ALL {
            assert_eq!(Topic::parse(topic.as_str()), Some(topic));
            let prefix = topic.as_str().split(':').next().unwrap_or_default();
            assert!(prefix.starts_with(topic.channel().as_str()), "{topic:?}");
        }
        assert_eq!(Topic::parse("webhook:session.unknown"), None);
    }
}
