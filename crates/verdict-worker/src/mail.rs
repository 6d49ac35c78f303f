//! E-mail receipts: over SMTP (lettre) when `smtp_url` is set, else as
//! `.eml` files in `mail_dir`.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use verdict_core::{Party, Status};
use verdict_store::{OutboxItem, OutboxOutcome, Session, Store};

use crate::{Delivery, WorkerError};

#[derive(Clone, Debug)]
pub struct MailConfig {
    /// `smtp://host:port` (plain or STARTTLS as the URL says) or
    /// `smtps://…`; `None` writes files instead.
    pub smtp_url: Option<String>,
    pub mail_dir: PathBuf,
    pub from: String,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            smtp_url: None,
            mail_dir: PathBuf::from("verdict-data/mail"),
            from: "verdict <receipts@verdict.invalid>".into(),
        }
    }
}

pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>),
}

impl Mailer {
    pub fn new(config: &MailConfig, timeout: Duration) -> Result<Mailer, WorkerError> {
        config
            .from
            .parse::<Mailbox>()
            .map_err(|error| WorkerError::Config(format!("mail_from: {error}")))?;
        match &config.smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|error| WorkerError::Config(format!("smtp_url: {error}")))?
                    .timeout(Some(timeout))
                    .build();
                Ok(Mailer::Smtp(transport))
            }
            None => {
                std::fs::create_dir_all(&config.mail_dir).map_err(|error| {
                    WorkerError::Config(format!("mail_dir {}: {error}", config.mail_dir.display()))
                })?;
                Ok(Mailer::Files(AsyncFileTransport::new(&config.mail_dir)))
            }
        }
    }
}

pub(crate) async fn deliver(
    mailer: &Mailer,
    from: &str,
    store: &dyn Store,
    item: &OutboxItem,
) -> Delivery {
    let (Some(session_id), Some(to), Some(party)) = (
        item.payload["session_id"].as_str(),
        item.payload["to"].as_str(),
        item.payload["party"].as_str().and_then(|party| party.parse::<Party>().ok()),
    ) else {
        return Delivery::Undeliverable("receipt row without session_id, to or party".into());
    };
    let session = match store.session(session_id).await {
        Ok(Some(session)) => session,
        Ok(None) => return Delivery::Undeliverable(format!("session {session_id} does not exist")),
        Err(error) => return Delivery::Failed { error: error.to_string(), payload: None },
    };
    let (subject, body) = receipt(&session, party);
    let to = match to.parse::<Mailbox>() {
        Ok(to) => to,
        Err(error) => return Delivery::Undeliverable(format!("bad recipient address: {error}")),
    };
    let message = Message::builder()
        .from(from.parse().expect("checked when the mailer was built"))
        .to(to)
        .subject(subject)
        // Stable per row: a resent receipt is recognisably the same message.
        .message_id(Some(format!("<receipt-{}@verdict>", item.id)))
        .header(ContentType::TEXT_PLAIN)
        .body(body);
    let message = match message {
        Ok(message) => message,
        Err(error) => return Delivery::Undeliverable(format!("cannot build the receipt: {error}")),
    };
    let sent = match mailer {
        Mailer::Smtp(transport) => {
            transport.send(message).await.map(drop).map_err(|e| e.to_string())
        }
        Mailer::Files(transport) => {
            transport.send(message).await.map(drop).map_err(|e| e.to_string())
        }
    };
    match sent {
        Ok(()) => Delivery::Done(OutboxOutcome::Delivered),
        Err(error) => Delivery::Failed { error: format!("mail: {error}"), payload: None },
    }
}

/// The receipt's subject and text: what happened, the billable time, the
/// amount for a completed session, the reason for the others.
pub fn receipt(session: &Session, party: Party) -> (String, String) {
    let status = session.status;
    let reason =
        session.reason().map(|reason| reason.as_str().replace('_', " ")).unwrap_or_default();
    let billable = session.billable_seconds().unwrap_or(0);
    let duration = format!("{}:{:02}", billable / 60, billable % 60);
    let amount = session.charged_cents.map(|cents| cents.0).unwrap_or(0);
    let money =
        format!("{}.{:02} {}", amount / 100, amount % 100, session.price.currency.to_uppercase());
    let subject = match status {
        Status::Completed => format!("Session {} completed: {money}", session.id),
        Status::Cancelled => format!("Session {} cancelled ({reason})", session.id),
        _ => format!("Session {} expired ({reason})", session.id),
    };
    let mut body = format!(
        "Hello,\n\nYour {} session {} has ended.\n\nStatus: {}\nBillable time: {duration} (min:s)\n",
        session.kind,
        session.id,
        status.as_str()
    );
    if status == Status::Completed {
        let line = match party {
            Party::Customer => format!("Amount charged: {money}\n"),
            Party::Provider => format!("Amount billed to the customer: {money}\n"),
        };
        body.push_str(&line);
    } else {
        body.push_str(&format!("Reason: {reason}\nNothing is charged for this session.\n"));
    }
    body.push_str("\nThis receipt was sent by verdict; the server decided the outcome from who was present.\n");
    (subject, body)
}
